"""What the image predictor keeps in its boot snapshot (cogkit/snapshot.py).

- `warmup.json`: a fingerprint of the warm-up picture (seed 0, one step, native size). A later boot
  with the same key compares its own warm-up with it; when they differ the snapshot no longer
  describes this pipeline and is replaced. A snapshot never changes an output.
- the torch.compile caches (cogkit.snapshot.save_compile_cache), when the UNet is compiled (GPU).
- `fastpath/`: what a boot needs to serve without importing diffusers or transformers
  (models/image/fastpath.py), when the pipeline allows it (CPU, Stable Diffusion with Euler).
"""

import hashlib
from pathlib import Path


def fingerprint(images) -> str:
    h = hashlib.sha256()
    for img in images:
        h.update(f"{img.size}{img.mode}".encode())
        h.update(img.tobytes())
    return h.hexdigest()


def recorded_fingerprint(restored: Path) -> str | None:
    from cogkit.snapshot import recorded_warmup

    return recorded_warmup(restored, "fingerprint")


def snapshot_filler(images, phases: dict, compile_cache: Path | None, fastpath=None):
    """The `fill` for Snapshot.save: the warm-up fingerprint, when compiled the compile caches, and
    what `fastpath(folder)` records (it logs instead of raising)."""

    from cogkit.snapshot import write_warmup

    def fill(folder: Path) -> None:
        write_warmup(folder, fingerprint=fingerprint(images), phases=phases)
        if compile_cache is not None:
            from cogkit.snapshot import save_compile_cache

            save_compile_cache(compile_cache, folder)
        if fastpath is not None:
            fastpath(folder)

    return fill
