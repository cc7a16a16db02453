"""Which container engine runs builds and containers: Docker, or Podman where Docker is absent.

Podman on this kind of machine (rootful, cgroup v1, no systemd) works only with runc and explicit
ulimits, so its commands get those flags.
"""

import shutil
import subprocess
from dataclasses import dataclass

ENGINES = ("docker", "podman")
INSTALL = ("install a container engine: apt-get install docker.io (then start `dockerd`), or "
           "https://docs.docker.com/engine/install/; `docker info` must answer")
PODMAN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


class EngineError(Exception):
    pass


@dataclass(frozen=True)
class Engine:
    name: str
    path: str

    def cmd(self, *args: str) -> list[str]:
        return [self.path, *args]

    def build_cmd(self, *args: str) -> list[str]:
        return [self.path, "build", *(PODMAN_FLAGS if self.name == "podman" else []), *args]

    def run_cmd(self, *args: str) -> list[str]:
        return [self.path, "run", *(PODMAN_FLAGS if self.name == "podman" else []), *args]

    def build_env(self) -> dict:
        # The classic builder: it needs no buildx plugin and no frontend image from a registry.
        return {"DOCKER_BUILDKIT": "0"} if self.name == "docker" else {}


def answers(path: str) -> bool:
    try:
        return subprocess.run([path, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine(preferred: str | None = None) -> Engine:
    """The engine to use: `preferred`, or the first of docker, podman whose `info` answers."""
    names = [preferred] if preferred else list(ENGINES)
    problems = []
    for name in names:
        if name not in ENGINES:
            raise EngineError(f"--engine {name!r}: choose one of {', '.join(ENGINES)}")
        path = shutil.which(name)
        if path is None:
            problems.append(f"`{name}` is not on PATH")
        elif not answers(path):
            problems.append(f"`{name} info` does not answer (is the daemon running?)")
        else:
            return Engine(name, path)
    raise EngineError(f"no container engine: {'; '.join(problems)}. {INSTALL}")
