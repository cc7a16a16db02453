"""The Cog server inside a model's image (`cogkit predict|serve MODEL --container`).

The same `CogServer` interface as the local server (health, predictions, SSE, setup log), with the
process being `docker run` in the foreground: coglet's log arrives on its stdout exactly as it does
locally, the port is published on 127.0.0.1 only, and the container is removed when it stops.
"""

import os
import subprocess
import time
import uuid

from cogkit.server import CogServer, free_port

# Passed into the container when set here: they change how a predictor runs, not what it is.
PASS_ENV = ("OMP_NUM_THREADS", "COGKIT_SNAPSHOT", "COGKIT_COMPILE", "COG_LOG_LEVEL", "RUST_LOG")


class ContainerServer(CogServer):
    def __init__(self, image: str, runner: str, port: int | None = None, host: str = "127.0.0.1",
                 env: dict | None = None, setup_timeout: float = 900, engine_name: str | None = None,
                 gpu: bool = False):
        super().__init__(runner, port=port or free_port(), host=host, env=env, setup_timeout=setup_timeout)
        from cogkit.engine import find_engine

        self.image = image
        self.engine = find_engine(engine_name)
        self.gpu = gpu
        self.name = f"cogkit-{uuid.uuid4().hex[:12]}"

    def start(self) -> "ContainerServer":
        from cogkit.image_build import PORT

        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(self.extra_env)
        env["COG_SETUP_TIMEOUT"] = str(int(self.setup_timeout))
        self.schema = {}  # the server validates with the schema inside the image (/src/.cog)
        bind = "127.0.0.1" if self.host in ("127.0.0.1", "localhost") else self.host
        cmd = self.engine.run_cmd(
            "--rm", "--name", self.name, "-p", f"{bind}:{self.port}:{PORT}",
            *(["--gpus", "all"] if self.gpu else []),
            *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")),
            self.image)
        with open(self.log_path, "wb") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # `docker stop` sends SIGTERM to tini, which forwards it to coglet; --rm then removes it.
            subprocess.run(self.engine.cmd("stop", "--time", "10", self.name), capture_output=True)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                subprocess.run(self.engine.cmd("rm", "--force", self.name), capture_output=True)
                self.proc.kill()
                self.proc.wait()
        super().stop()


def container_server(spec, args, port=None, host="127.0.0.1", log=print) -> ContainerServer:
    """The server for `--container`: the image named by --image, else `cogkit build MODEL` first
    (as `cog run` builds before it runs; unchanged layers make that a few seconds)."""
    from cogkit.image_build import build

    image = getattr(args, "image", None)
    gpu = False
    if not image:
        # A GPU model gets its CUDA image only where a GPU can run it; elsewhere its CPU build.
        result = build(spec.name, base=getattr(args, "base", None), engine_name=getattr(args, "engine", None),
                       gpu=None if has_gpu() else False,
                       log=lambda line: log(line) if line.startswith("build:") else None)
        log(f"build: {result.tag} is up to date ({result.seconds:.1f}s)")
        image, gpu = result.tag, result.gpu
    return ContainerServer(image, spec.runner, port=port, host=host, setup_timeout=args.setup_timeout,
                           engine_name=getattr(args, "engine", None), gpu=gpu)


def has_gpu() -> bool:
    """Whether `--gpus all` can be passed: an NVIDIA driver answers on this machine."""
    from shutil import which

    return which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0
