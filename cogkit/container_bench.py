"""`cogkit bench container MODEL`: what the image costs, measured in one run.

  cold build      `cogkit build` with no layer cache (the wheelhouse already downloaded; its first
                  download is timed separately, as is the base image, which is not rebuilt)
  code rebuild    the build after a one-line change to predict.py (in a copy of the project)
  size            the image's size as the engine reports it
  start → READY   a fresh container (engine start included) against the same predictor booted by
                  `cogkit predict` without a container, interleaved, medians
"""

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

CODE_COPY = ("predict.py", "pyproject.toml", "requirements.txt", "requirements-dev.txt", ".dockerignore",
             "cogkit", "models", "requirements")


def project_copy(root: Path, dest: Path) -> Path:
    """The project's code and requirement files (not weights, locks or git state) under `dest`."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in CODE_COPY:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    for lock in (dest / "models" / "locks").glob("*.json"):
        lock.unlink()
    return dest


def ready_seconds(server) -> float:
    with server:
        server.start()
        server.wait_ready()
        return server.ready_at - server.started_at


def bench_container(model: str, runs: int, base: str | None, gpu: bool | None, log) -> dict:
    from cogkit.container import ContainerServer
    from cogkit.engine import find_engine
    from cogkit.image_build import build, image_size
    from cogkit.server import CogServer
    from cogkit.ship.config import compose
    from cogkit.weights import project_root
    from cogkit.wheelhouse import download
    from models import get_model

    spec = get_model(model)
    root = project_root()
    engine = find_engine()
    config = compose(model, root).config
    gpu = bool(config["build"].get("gpu")) and has_gpu() if gpu is None else gpu
    tag = f"cogkit-bench-{model}:{'gpu' if gpu else 'cpu'}"
    quiet = lambda line: log(line) if line.startswith("build:") else None  # noqa: E731

    started = time.monotonic()
    download(model, root / config["build"]["python_requirements"], [], gpu, log=quiet)
    wheelhouse = time.monotonic() - started
    cold = build(model, tag=tag, base=base, gpu=gpu, log=quiet, no_cache=True)
    log(f"bench: cold build {cold.seconds:.1f}s")
    with tempfile.TemporaryDirectory(prefix="cogkit-bench-code-") as scratch:
        copy = project_copy(root, Path(scratch))
        with open(copy / "predict.py", "a") as f:
            f.write(f"\n# code change for `cogkit bench container` at {time.time()}\n")
        rebuild = build(model, tag=tag, base=base, gpu=gpu, log=quiet, root=copy)
    log(f"bench: rebuild after a code change {rebuild.seconds:.1f}s")
    size = image_size(tag)

    env = {"COGKIT_MODEL": spec.name}
    container, local = [], []
    for i in range(runs):  # interleaved, so that the machine's load hits both alike
        container.append(ready_seconds(ContainerServer(tag, spec.runner, env=env, gpu=gpu)))
        local.append(ready_seconds(CogServer(spec.runner, env=env)))
        log(f"bench: run {i + 1}/{runs}: container {container[-1]:.2f}s, no container {local[-1]:.2f}s")
    return {"model": model, "image": tag, "base": cold.base, "gpu": gpu, "size_bytes": size,
            "wheelhouse_seconds": wheelhouse, "cold_build_seconds": cold.seconds,
            "code_rebuild_seconds": rebuild.seconds,
            "ready_container": {"median": statistics.median(container), "runs": container},
            "ready_no_container": {"median": statistics.median(local), "runs": local}}


def has_gpu() -> bool:
    from cogkit.container import has_gpu as gpu_here

    return gpu_here()


def cmd_bench_container(args) -> int:
    from rich.console import Console

    out = Console(stderr=True, highlight=False, soft_wrap=True)
    result = bench_container(args.model, args.runs, args.base, args.gpu, lambda m: out.print(m, markup=False))
    c, n = result["ready_container"]["median"], result["ready_no_container"]["median"]
    print(f"| {result['model']} | {result['size_bytes'] / 1e6:.0f} MB | {result['cold_build_seconds']:.0f} s | "
          f"{result['code_rebuild_seconds']:.1f} s | {c:.2f} s | {n:.2f} s |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def add_bench_commands(bench, model_help: str) -> None:
    b = bench.add_parser("container", help="image size, cold build, rebuild after a code change, "
                                           "start → READY with and without the container")
    b.add_argument("model", help=model_help)
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--base", help="base image (see `cogkit build --base`)")
    gpu = b.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="gpu", action="store_true", default=None)
    gpu.add_argument("--cpu", dest="gpu", action="store_false")
    b.add_argument("--json", dest="json_path", help="write the results to this file")
    b.set_defaults(func=cmd_bench_container)
