"""`cogkit build-weights`: resolve a source, convert it with the model's builder, write atomically."""

import shutil
import time
from pathlib import Path

from cogkit.sources import resolve
from cogkit.weights import build_atomically, weights_dir
from models import get_model


def build_weights(model: str, source: str | None = None, dtype: str | None = None,
                  dest: Path | None = None, sha256: str | None = None, log=print,
                  engine: str | None = None) -> dict:
    spec = get_model(model)
    builder = spec.builder_module()
    source = source or spec.default_source
    dtype = dtype or builder.runtime_dtype()
    supported = getattr(builder, "DTYPES", ("float32", "bfloat16", "float16"))
    if dtype not in supported:
        raise ValueError(f"dtype: {model} weights can be built as {', '.join(supported)}, not {dtype}")
    engines = getattr(builder, "ENGINES", None)
    if engine is not None and engine not in (engines or ()):
        raise ValueError(f"engine: {model} weights can be built for "
                         f"{', '.join(engines) if engines else 'its one runtime only'}, not {engine}")
    engine_args = {"engine": engine} if engine else {}
    dest = Path(dest) if dest else weights_dir(spec.name)
    started = time.perf_counter()
    log(f"building {model} weights from {source} as {dtype}{f' for {engine}' if engine else ''} into {dest}")

    def write(tmp: Path) -> dict:
        if source.startswith("builtin:"):
            # A source the model's builder generates itself (e.g. a tiny random pipeline for offline use).
            path = builder.builtin_source(source.removeprefix("builtin:"), tmp / ".source")
            facts = {"source": source, "revision": None}
        else:
            path, facts = resolve(source, workdir=tmp / ".source", sha256=sha256,
                                  allow_patterns=getattr(builder, "HF_ALLOW_PATTERNS", None))
        result = {**facts, **builder.convert(path, tmp, dtype, **engine_args)}
        shutil.rmtree(tmp / ".source", ignore_errors=True)
        return result

    manifest = build_atomically(dest, write)
    log(f"built {dest} in {time.perf_counter() - started:.1f}s "
        f"({sum(f['size'] for f in manifest['files'].values()) / 1e6:.0f} MB)")
    return manifest
