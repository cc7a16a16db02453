"""Built weights folders: atomic writes, a checksummed manifest, verification.

A folder is complete exactly when it holds `manifest.json`. The folder is assembled under a hidden
temporary name next to its destination and renamed into place only after the manifest is written,
so an interrupted build never leaves a folder that looks complete.
"""

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

MANIFEST = "manifest.json"
SKIP_IN_MANIFEST = {MANIFEST, "snapshot"}


class WeightsError(Exception):
    pass


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def weights_root() -> Path:
    return Path(os.environ.get("COGKIT_WEIGHTS_DIR") or project_root() / "weights")


def weights_dir(model: str) -> Path:
    return weights_root() / model


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tool_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("cogkit", "torch", "safetensors", "tokenizers", "transformers", "gguf", "ctranslate2", "cog"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def payload_paths(folder: Path) -> list[str]:
    """Files the manifest covers: everything but the manifest itself and the snapshot."""
    return [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in SKIP_IN_MANIFEST]


def list_files(folder: Path) -> dict:
    return {rel: {"sha256": sha256_file(folder / rel), "size": (folder / rel).stat().st_size}
            for rel in payload_paths(folder)}


def build_atomically(dest: Path, write: Callable[[Path], dict]) -> dict:
    """Run `write(tmp_folder)`, which fills the folder and returns facts for the manifest
    (source, revision, dtype …); then checksum, write the manifest and swap the folder into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        facts = write(tmp)
        for path in tmp.rglob("*"):  # safetensors writes 0600; the image's user must read it
            path.chmod(0o755 if path.is_dir() else 0o644)
        manifest = {"model": dest.name, **facts, "files": list_files(tmp),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "tools": tool_versions()}
        write_json_atomic(tmp / MANIFEST, manifest)
        tmp.chmod(0o755)
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            dest.rename(old)
        tmp.rename(dest)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise WeightsError(f"{folder} has no built weights (no {MANIFEST}); "
                           f"run `cogkit build-weights {Path(folder).name}` first")
    return json.loads(path.read_text())


def verify(folder: Path) -> list[str]:
    """Problems found when re-checking every file against the manifest; empty when all is well."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    for rel, want in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{rel}: size {path.stat().st_size} differs from {want['size']}")
        elif sha256_file(path) != want["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    extra = set(payload_paths(folder)) - set(manifest["files"])
    problems += [f"{rel}: not in the manifest" for rel in sorted(extra)]
    return problems
