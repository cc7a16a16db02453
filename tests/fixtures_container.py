"""Session fixtures for container tests: a real engine, a base image, a local registry.

Tests that need an engine skip only when none can be used here, saying why; CI (`.ci/run`) installs
docker.io and starts dockerd, so they run there.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cogkit.weights import project_root

ROOT = project_root()
OFFLINE_BASE = "cogkit/base:bookworm"


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """A running engine: the one that answers, else a dockerd this session starts (as root) and stops."""
    from cogkit.engine import EngineError, find_engine

    try:
        yield find_engine()
        return
    except EngineError as e:
        reason = str(e)
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip(f"container tests need a running engine, and none can be started here: {reason}")
    log = open(tmp_path_factory.mktemp("dockerd") / "dockerd.log", "wb")
    proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                found = find_engine("docker")
                break
            except EngineError:
                time.sleep(1)
        else:
            pytest.skip(f"container tests need a running engine; dockerd did not start (log: {log.name})")
        yield found
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def image_exists(engine, name: str) -> bool:
    return subprocess.run(engine.cmd("image", "inspect", name), capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def base_image(engine):
    """COGKIT_BASE_IMAGE, else python:3.11-slim if it is here or can be pulled, else the offline
    Debian base (made by scripts/make-base-image.sh when missing: ~3-7 minutes)."""
    wanted = os.environ.get("COGKIT_BASE_IMAGE")
    if wanted:
        assert image_exists(engine, wanted) or subprocess.run(engine.cmd("pull", wanted)).returncode == 0, \
            f"COGKIT_BASE_IMAGE={wanted} is neither here nor pullable"
        return wanted
    for name in ("python:3.11-slim", OFFLINE_BASE):
        if image_exists(engine, name):
            return name
    try:
        if subprocess.run(engine.cmd("pull", "python:3.11-slim"), capture_output=True, timeout=300).returncode == 0:
            return "python:3.11-slim"
    except subprocess.TimeoutExpired:
        pass  # no registry answers: make the base offline
    if shutil.which("debootstrap") is None:
        pytest.skip("no base image (python:3.11-slim cannot be pulled) and no debootstrap to make one")
    subprocess.run(["bash", str(ROOT / "scripts" / "make-base-image.sh"), OFFLINE_BASE], check=True,
                   env={**os.environ, "ENGINE": engine.name})
    return OFFLINE_BASE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory):
    """Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1: HOST:PORT."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        pytest.skip("no local registry binary: apt-get install docker-registry (CI's .ci/run does)")
    folder = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = folder / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {folder}/data\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    log = open(folder / "registry.log", "wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://{address}/v2/", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"the registry did not start: {(folder / 'registry.log').read_text()[-2000:]}")
    yield address
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def project_copy(dest: Path) -> Path:
    """A copy of this project's code (not its weights, locks or git state), so that a test can change
    code or record a push lock without touching the checkout."""
    from cogkit.container_bench import project_copy as copy

    return copy(ROOT, dest)
