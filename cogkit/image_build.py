"""`cogkit build MODEL`: the image `cog build` would make for one model, without the Cog CLI.

What goes in (the same as a Cog image): Python 3.11, the model's own pinned requirements
(`build.python_requirements` of its composed cog.yaml, e.g. requirements/tts.txt: no torch there),
the Cog SDK and coglet, the code at /src, only weights/MODEL, `.cog/openapi_schema.json`, tini as
PID 1, `python -m cog.server.http` on port 5000, and Cog's labels (`run.cog.version`, `.config`,
`.openapi_schema`, `.pip_freeze`, `.has_init`, `org.opencontainers.image.revision`/`.version`).

Two builds, slowest-changing first, so that a code change rebuilds in seconds:
  cogkit-deps-MODEL  a venv installed with --no-index from a wheelhouse the host downloaded
                     (cogkit.wheelhouse): no index or TLS needed inside the build
  the model's image  base + tini, the venv copied from the deps image, weights/MODEL, the code and
                     schema, then the boot snapshot: the predictor's setup() runs once *inside* the
                     image, so that the snapshot's key (Python, package versions, device) is the one
                     the image's server computes; then Cog's environment, entrypoint and labels.
"""

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BASE = "python:3.11-slim"
CODE = ("predict.py", "pyproject.toml", "cogkit", "models")  # what /src holds besides cog.yaml, .cog
SKIP_CODE = ("__pycache__", "*.pyc", "*.egg-info", "locks")
PORT = 5000


class BuildError(Exception):
    pass


@dataclass
class BuildResult:
    model: str
    tag: str
    image_id: str
    labels: dict
    seconds: float
    gpu: bool
    base: str
    steps: list = field(default_factory=list)


def default_tag(model: str, gpu: bool, config_gpu: bool) -> str:
    """`cogkit-MODEL:latest` is the image cog.yaml describes; a CPU build of a GPU model (to run it
    on a machine without a GPU) is `cogkit-MODEL:cpu`, and the reverse `:gpu`."""
    return f"cogkit-{model}:{'latest' if gpu == config_gpu else ('gpu' if gpu else 'cpu')}"


def default_base() -> str:
    return os.environ.get("COGKIT_BASE_IMAGE") or DEFAULT_BASE


def sdk_pins(root: Path) -> list[str]:
    """cog and coglet at the versions the development venv pins (requirements-dev.txt)."""
    from cogkit.wheelhouse import pinned

    dev = root / "requirements-dev.txt"
    pins = []
    for package in ("cog", "coglet"):
        version = pinned(dev, package)
        if not version:
            raise BuildError(f"{dev.name} pins no {package}==VERSION; the image needs the Cog SDK")
        pins.append(f"{package}=={version}")
    return pins


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def weight_files(folder: Path) -> list[Path]:
    """manifest.json and the files it lists: never a host snapshot (its key is the host's) nor
    leftovers of an interrupted build."""
    from cogkit.weights import MANIFEST, read_manifest

    manifest = read_manifest(folder)
    files = manifest.get("files") or {}
    return [folder / MANIFEST, *(folder / name for name in files)]


def concurrency(config: dict) -> int | None:
    value = (config.get("concurrency") or {}).get("max")
    return int(value) if value else None


def deps_dockerfile(base: str, torch: str | None, sdk: list[str]) -> str:
    pip = "/opt/venv/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir --disable-pip-version-check"
    torch_step = f"{pip} '{torch}' && " if torch else ""
    return "\n".join([
        "# Written by `cogkit build`: the model's Python dependencies, installed from the host's wheelhouse.",
        f"FROM {base}",
        "COPY wheels /tmp/wheels",
        "COPY requirements.txt constraints.txt /tmp/",
        # torch alone first: pip must not pick any other build of it for a dependant.
        f"RUN python3 -m venv /opt/venv && {torch_step}"
        f"{pip} -c /tmp/constraints.txt -r /tmp/requirements.txt {' '.join(sdk)}",
        "",
    ])


def dockerfile(base: str, deps_image: str, runner: str, snapshot: bool, concurrency_max: int | None,
               gpu: bool, environment: list[str] | None = None) -> str:
    lines = [
        "# Written by `cogkit build`; the build context is regenerated at every build.",
        f"FROM {base}",
        # Cog's images run tini as PID 1 (signals, zombie reaping); the offline Debian base has it.
        "RUN command -v tini >/dev/null || (apt-get update -qq && apt-get install -qqy --no-install-recommends "
        "tini && rm -rf /var/lib/apt/lists/*)",
        # cogkit/startup: its sitecustomize imports cog's SDK lighter in both of coglet's processes.
        "ENV PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH PYTHONPATH=/src:/src/cogkit/startup",
    ]
    if gpu:
        lines.append("ENV NVIDIA_DRIVER_CAPABILITIES=all "
                     "LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/usr/local/nvidia/lib64:/usr/local/nvidia/bin")
    # cog.yaml's `environment:` (e.g. COGKIT_MODEL, which names the model a shared predictor serves).
    for entry in environment or []:
        key, _, value = entry.partition("=")
        lines.append(f"ENV {key}={json.dumps(value)}")
    lines += [
        f"COPY --from={deps_image} /opt/venv /opt/venv",
        "WORKDIR /src",
        "COPY weights /src/weights",
        "COPY src /src",
    ]
    # Compile the code once here rather than at every boot; then record the boot snapshot.
    step = "python -m compileall -q /src/predict.py /src/cogkit /src/models"
    if snapshot:
        step += f" && OMP_NUM_THREADS=1 python -m cogkit.boot_once {runner}"
    lines.append(f"RUN {step}")
    env = [f'COG_PREDICT_TYPE_STUB="{runner}"']
    if concurrency_max:
        env.append(f"COG_MAX_CONCURRENCY={concurrency_max}")
    lines += [
        f"ENV {' '.join(env)}",
        f"EXPOSE {PORT}",
        'ENTRYPOINT ["tini", "--"]',
        'CMD ["python", "-m", "cog.server.http", "--host", "0.0.0.0"]',
        "",
    ]
    return "\n".join(lines)


def git_facts(root: Path) -> dict:
    labels = {}
    for key, cmd in (("org.opencontainers.image.revision", ["git", "rev-parse", "HEAD"]),
                     ("org.opencontainers.image.version", ["git", "describe", "--tags", "--exact-match"])):
        try:
            out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            labels[key] = out.stdout.strip()
    return labels


def prepare_deps_context(context: Path, wheels: list[Path], requirements: Path, constraints: Path,
                         text: str) -> None:
    if context.exists():
        shutil.rmtree(context)
    (context / "wheels").mkdir(parents=True)
    for wheel in wheels:
        link_or_copy(wheel, context / "wheels" / wheel.name)
    shutil.copy2(requirements, context / "requirements.txt")
    # Only the pins of what this image installs: a change elsewhere in the development venv must not
    # invalidate the dependency layer (its cache key includes this file).
    from cogkit.wheelhouse import normalise

    installed = {normalise(wheel.name.split("-")[0]) for wheel in wheels}
    lines = [line for line in constraints.read_text().splitlines()
             if normalise(line.split("==")[0]) in installed]
    (context / "constraints.txt").write_text("\n".join(lines) + "\n")
    (context / "Dockerfile").write_text(text)


def prepare_context(context: Path, model: str, root: Path, selection, schema: dict, text: str) -> None:
    from cogkit.ship.config import render
    from cogkit.weights import weights_dir

    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    folder = weights_dir(model)
    for path in weight_files(folder):
        link_or_copy(path, context / "weights" / model / path.relative_to(folder))
    src = context / "src"
    for name in CODE:
        path = root / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns(*SKIP_CODE))
        elif path.is_file():
            link_or_copy(path, src / name)
    (src / "cog.yaml").write_text(render(selection))
    (src / ".cog").mkdir()
    (src / ".cog" / "openapi_schema.json").write_text(json.dumps(schema, indent=2))
    (context / "Dockerfile").write_text(text)


def run_step(cmd: list[str], env: dict, log, what: str) -> str:
    """Run one engine command, streaming its output to `log`; returns the output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env})
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        log(line.rstrip("\n"))
    if proc.wait() != 0:
        tail = "\n".join(lines[-25:])
        raise BuildError(f"{what} failed (exit code {proc.returncode}):\n{tail}")
    return "\n".join(lines)


def base_hint(base: str) -> str:
    return (f"the base image {base!r} is not available (no registry reachable?). Make one offline with "
            "`scripts/make-base-image.sh` and build with `--base cogkit/base:bookworm` "
            "(or set COGKIT_BASE_IMAGE)")


def build(model: str, tag: str | None = None, base: str | None = None, engine_name: str | None = None,
          gpu: bool | None = None, root: Path | None = None, log=print, no_cache: bool = False) -> BuildResult:
    from cogkit.engine import find_engine
    from cogkit.schema import load_predictor_info, openapi_schema
    from cogkit.ship.config import ShipError, select
    from cogkit.weights import project_root
    from cogkit.wheelhouse import download, torch_requirement

    started = time.monotonic()
    root = Path(root or project_root())
    base = base or default_base()
    engine = find_engine(engine_name)
    try:
        selection = select(model, root, write=False)
    except ShipError as e:
        raise BuildError(str(e)) from None
    config = selection.config
    config_gpu = bool(config["build"].get("gpu"))
    gpu = config_gpu if gpu is None else gpu
    tag = tag or default_tag(model, gpu, config_gpu)
    requirements = root / config["build"].get("python_requirements", "requirements.txt")
    if not requirements.is_file():
        raise BuildError(f"build.python_requirements: {requirements} does not exist")
    runner = config["run"]
    schema = openapi_schema(load_predictor_info(runner, root))
    sdk = sdk_pins(root)

    if subprocess.run(engine.cmd("image", "inspect", base), capture_output=True).returncode != 0:
        log(f"build: pulling {base}")
        if subprocess.run(engine.cmd("pull", base), capture_output=True).returncode != 0:
            raise BuildError(base_hint(base))

    log(f"build: wheels for {requirements.relative_to(root)} ({'GPU: CUDA' if gpu else 'CPU'} build)")
    wheel_dir, wheels = download(model, requirements, sdk, gpu, log=log)
    torch = torch_requirement(requirements, gpu)
    work = root / ".cogkit" / "build" / model

    # Two builds, two contexts: the dependencies (wheels only), then the image (weights and code),
    # so neither sends the other's files to the engine, and `pip freeze` is read in between.
    deps_tag = f"cogkit-deps-{model}:{'gpu' if gpu else 'cpu'}"
    prepare_deps_context(work / "deps", wheels, requirements, wheel_dir / "constraints.txt",
                         deps_dockerfile(base, torch, sdk))
    log(f"build: dependencies ({len(wheels)} wheels) -> {deps_tag}")
    cache = ["--no-cache"] if no_cache else []
    run_step(engine.build_cmd(*cache, "-t", deps_tag, str(work / "deps")), engine.build_env(), log,
             f"building the dependencies of {model}")
    freeze = subprocess.run(engine.run_cmd("--rm", "--entrypoint", "/opt/venv/bin/python", deps_tag,
                                           "-m", "pip", "freeze", "--disable-pip-version-check"),
                            capture_output=True, text=True)
    if freeze.returncode != 0:
        raise BuildError(f"pip freeze in {deps_tag} failed: {freeze.stderr.strip()[-500:]}")

    labels = {
        "run.cog.version": sdk[0].split("==")[1],  # the Cog SDK inside the image
        "run.cog.config": json.dumps(config, separators=(",", ":")),
        "run.cog.openapi_schema": json.dumps(schema, separators=(",", ":")),
        "run.cog.pip_freeze": freeze.stdout.strip(),
        "run.cog.has_init": "true",
        **git_facts(root),
    }
    prepare_context(work / "image", model, root, selection, schema,
                    dockerfile(base, deps_tag, runner, selection.snapshot, concurrency(config), gpu,
                               config.get("environment")))
    log(f"build: code, weights/{model}{' and the boot snapshot' if selection.snapshot else ''} -> {tag}")
    label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    run_step(engine.build_cmd(*cache, *label_args, "-t", tag, str(work / "image")), engine.build_env(), log,
             f"building {tag}")
    image_id = subprocess.run(engine.cmd("image", "inspect", "--format", "{{.Id}}", tag),
                              capture_output=True, text=True).stdout.strip()
    return BuildResult(model, tag, image_id, labels, time.monotonic() - started, gpu, base)


def image_labels(tag: str, engine_name: str | None = None) -> dict:
    from cogkit.engine import find_engine

    engine = find_engine(engine_name)
    out = subprocess.run(engine.cmd("image", "inspect", "--format", "{{json .Config.Labels}}", tag),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildError(f"no image {tag!r}: {out.stderr.strip()}")
    return json.loads(out.stdout) or {}


def image_size(tag: str, engine_name: str | None = None) -> int:
    from cogkit.engine import find_engine

    engine = find_engine(engine_name)
    out = subprocess.run(engine.cmd("image", "inspect", "--format", "{{.Size}}", tag),
                         capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


# ---------------------------------------------------------------- command


def cmd_build(args) -> int:
    from rich.console import Console

    from models import get_model

    out = Console(stderr=True, highlight=False, soft_wrap=True)
    model = get_model(args.model).name
    quiet = getattr(args, "quiet", False)

    def log(line: str) -> None:
        if not quiet or line.startswith(("build:", "Step ", "wheelhouse:")):
            # a LABEL step echoes whole JSON documents (schema, pip freeze): one line is enough
            out.print(line if len(line) <= 160 else line[:157] + "...", markup=False)

    try:
        result = build(model, tag=args.tag, base=args.base, engine_name=args.engine, gpu=args.gpu, log=log)
    except Exception as e:
        from cogkit.engine import EngineError
        from cogkit.wheelhouse import WheelhouseError

        if isinstance(e, (BuildError, EngineError, WheelhouseError)):
            out.print(f"[bold red]error:[/bold red] {e}", markup=True, highlight=False)
            return 1
        raise
    size = image_size(result.tag, args.engine)
    out.print(f"built {result.tag} ({result.image_id[:19]}, {size / 1e6:.0f} MB, "
              f"{'GPU: CUDA' if result.gpu else 'CPU'} build) in {result.seconds:.1f}s from {result.base}")
    return 0


def add_commands(sub, model_help: str) -> None:
    p = sub.add_parser("build", help="build the model's container image (what `cog build` makes), no Cog CLI")
    p.add_argument("model", help=model_help)
    p.add_argument("--tag", "-t",
                   help="image name (default: cogkit-MODEL:latest; :cpu for a --cpu build of a GPU model)")
    p.add_argument("--base", help=f"base image with Python 3.11 (default: {DEFAULT_BASE}, or COGKIT_BASE_IMAGE); "
                   "scripts/make-base-image.sh makes one offline")
    p.add_argument("--engine", choices=["docker", "podman"], help="default: the first that answers")
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="gpu", action="store_true", default=None,
                     help="PyPI's CUDA torch (default: cog.yaml's build.gpu)")
    gpu.add_argument("--cpu", dest="gpu", action="store_false", help="torch's CPU wheel")
    p.add_argument("--quiet", "-q", action="store_true", help="show only the build's steps")
    p.set_defaults(func=cmd_build)
