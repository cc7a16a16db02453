"""Push without the Cog CLI: `cog push` is `cog build` plus a plain registry push, so cogkit does
`cogkit build MODEL --tag DEST` and then `docker push DEST` (or `podman push`, or `skopeo copy`).

Replicate reads everything it needs from the image: the labels (`run.cog.config`,
`run.cog.openapi_schema`, …) and `/src/.cog/openapi_schema.json`.
"""

import re
import shutil
import subprocess
from dataclasses import dataclass

LOCAL_REGISTRY = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+)(:\d+)?/")


@dataclass
class PushPlan:
    model: str
    image: str
    tool: str  # docker | podman | skopeo
    build: list[str]
    push: list[str]


def registry_is_local(image: str) -> bool:
    return bool(LOCAL_REGISTRY.match(image))


def push_command(tool: str, engine: str, image: str) -> list[str]:
    if tool == "skopeo":
        # skopeo's docker-daemon transport wants an explicit tag; the build tagged it :latest.
        source = f"docker-daemon:{image}:latest" if engine == "docker" else f"containers-storage:{image}:latest"
        tls = ["--dest-tls-verify=false"] if registry_is_local(image) else []
        return ["skopeo", "copy", *tls, source, f"docker://{image}"]
    tls = ["--tls-verify=false"] if tool == "podman" and registry_is_local(image) else []
    return [tool, "push", *tls, image]


def plan(model: str, image: str, engine: str, use_skopeo: bool = False, base: str | None = None) -> PushPlan:
    build = ["cogkit", "build", model, "--tag", image, *(["--base", base] if base else []), "--engine", engine]
    tool = "skopeo" if use_skopeo else engine
    return PushPlan(model, image, tool, build, push_command(tool, engine, image))


def missing(use_skopeo: bool, engine_name: str | None = None) -> list[str]:
    """What stops a push without the Cog CLI here; empty when it can run."""
    from cogkit.engine import EngineError, find_engine

    problems = []
    try:
        find_engine(engine_name)
    except EngineError as e:
        problems.append(str(e))
    if use_skopeo and shutil.which("skopeo") is None:
        problems.append("`skopeo` is not on PATH: apt-get install skopeo")
    return problems


def build_and_push(p: PushPlan, base: str | None, engine_name: str | None, log, root=None) -> int:
    from cogkit.image_build import build

    result = build(p.model, tag=p.image, base=base, engine_name=engine_name, root=root,
                   log=lambda line: log(line) if line.startswith("build:") else None)
    log(f"built {result.tag} in {result.seconds:.1f}s; $ {' '.join(p.push)}")
    return subprocess.run(p.push).returncode
