"""A folder of wheels, downloaded on the host, that an image build installs from with `--no-index`.

Inside a build, pip often cannot reach an index (no registry, or TLS that fails without the host's CA
certificates) and never sees the host's local wheel folders (where a CPU torch may be the only one).
So the host's own pip, with its own configuration, downloads exactly the wheels a model needs, once,
into a cache that later builds reuse: `~/.cache/cogkit/wheelhouse/<cpu|cuda>/<model>/`
(`COGKIT_WHEELHOUSE` moves it).

Versions: the model's requirement file, constrained by what the development venv has installed
(`pip freeze`), so the image runs the versions the tests ran. A CPU image gets torch's CPU wheel
(`torch==V+cpu`); a GPU image gets PyPI's default (CUDA) build of `torch==V` and its nvidia wheels.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

SAVED = re.compile(r"^\s*(?:Saved|File was already downloaded) (?P<path>\S+\.whl)\s*$")


class WheelhouseError(Exception):
    pass


def wheelhouse_root() -> Path:
    return Path(os.environ.get("COGKIT_WHEELHOUSE") or Path.home() / ".cache" / "cogkit" / "wheelhouse")


def pinned(requirements: Path, package: str) -> str | None:
    """The `==` version of `package` in a requirement file, or None."""
    for line in requirements.read_text().splitlines():
        name, sep, ver = line.split("#")[0].strip().partition("==")
        if sep and normalise(name) == normalise(package):
            return ver.strip()
    return None


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(requirements: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in requirements.read_text().splitlines()
            if line.split("#")[0].strip()]


def host_constraints() -> list[str]:
    """`pip freeze` of the running venv, minus editable/local installs and torch (its build differs
    between CPU and GPU images and is pinned separately)."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    keep = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith(("-e", "#")) or " @ " in line or "==" not in line:
            continue
        if normalise(line.split("==")[0]) == "torch":
            continue
        keep.append(line)
    return keep


def torch_requirement(requirements: Path, gpu: bool) -> str | None:
    version = pinned(requirements, "torch")
    if version is None:
        return None
    version = version.split("+")[0]
    return f"torch=={version}" if gpu else f"torch=={version}+cpu"


def pip_download(args: list[str], dest: Path, env: dict, log) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
           "--dest", str(dest), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise WheelhouseError(f"`pip download {' '.join(args)}` failed:\n{tail}")
    wheels = []
    for line in proc.stdout.splitlines():
        match = SAVED.match(line)
        if match:
            path = Path(match["path"])
            wheels.append(path if path.is_absolute() else dest / path.name)
    log(f"wheelhouse: {len(wheels)} wheels for {' '.join(a for a in args if '==' in a)[:100]}")
    return wheels


def download(model: str, requirements: Path, extra: list[str], gpu: bool, log=print) -> tuple[Path, list[Path]]:
    """Fill the model's wheelhouse; returns its folder and exactly the wheels this build installs
    (a folder may hold older ones from earlier pins)."""
    dest = wheelhouse_root() / ("cuda" if gpu else "cpu") / model
    dest.mkdir(parents=True, exist_ok=True)
    constraints = dest / "constraints.txt"
    wanted = "\n".join(host_constraints()) + "\n"
    # Unchanged requirements and venv: the wheels of the last download, without asking pip again.
    key = hashlib.sha256(json.dumps([requirements.read_text(), wanted, extra, gpu]).encode()).hexdigest()
    stamp = dest / "download.json"
    if stamp.is_file() and constraints.is_file():
        last = json.loads(stamp.read_text())
        wheels = [dest / name for name in last.get("wheels", [])]
        if last.get("key") == key and wheels and all(w.is_file() for w in wheels):
            log(f"wheelhouse: {len(wheels)} wheels in {dest} (unchanged)")
            return dest, wheels
    constraints.write_text(wanted)
    env = {**os.environ}
    wheels: list[Path] = []
    torch = torch_requirement(requirements, gpu)
    index: list[str] = []
    if gpu:
        # PyPI's default torch is the CUDA build; the host's own pip configuration may point at local
        # folders that hold only the CPU one, so a GPU wheelhouse ignores it.
        index = ["--isolated", "--index-url", os.environ.get("COGKIT_GPU_INDEX", "https://pypi.org/simple")]
        cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
        if Path(cert).is_file():
            index += ["--cert", cert]
    if torch:
        # torch alone first, then pinned for the rest: resolved with other packages, pip could pick
        # another build of it.
        wheels += pip_download([*index, "-c", str(constraints), torch], dest, env, log)
        constraints.write_text(constraints.read_text() + torch + "\n")
    rest = [line for line in requirement_lines(requirements) if normalise(line.split("==")[0]) != "torch"]
    wheels += pip_download([*index, "--find-links", str(dest), "-c", str(constraints), *rest, *extra],
                           dest, env, log)
    unique = sorted({w.name: w for w in wheels}.values(), key=lambda w: w.name)
    missing = [w for w in unique if not w.is_file()]
    if missing:
        raise WheelhouseError(f"pip reported wheels that are not in {dest}: {', '.join(w.name for w in missing)}")
    stamp.write_text(json.dumps({"key": key, "wheels": [w.name for w in unique]}))
    return dest, unique
