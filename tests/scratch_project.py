"""A fresh copy of this project (the files a clone has: tracked and not ignored, no weights) in which
the `cogkit` command runs as it would in a new user's checkout: its code and models come from the
copy (PYTHONPATH), with this checkout's virtual environment first on PATH."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cogkit.weights import project_root


def copy_project(dest: Path) -> Path:
    root = project_root()
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = root / rel
        if rel.startswith("weights/") or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    return dest


def project_env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGKIT_", "PYTEST_"))}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(root)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def run(root: Path, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a shell command in the copy as a user would type it."""
    return subprocess.run(["bash", "-c", command], cwd=root, env=project_env(root), capture_output=True,
                          text=True, timeout=timeout)
