"""Run a predictor's setup() once in this process, then check its boot snapshot:
`python -m cogkit.boot_once predict.py:LLMRunner`.

`cogkit build` runs this inside the image it builds, so the snapshot is recorded where it will be
used: its key holds the Python and package versions, which differ between the host and the image.
"""

import importlib
import os
import sys
from pathlib import Path


def boot(ref: str) -> None:
    file, _, cls = ref.partition(":")
    module = importlib.import_module(Path(file).with_suffix("").as_posix().replace("/", "."))
    getattr(module, cls)().setup()


def device_here() -> str:
    """The device the predictor ran on, from whichever engine its image has (a Whisper or TTS image
    has no torch)."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    try:
        from cogkit.ct2_cpu import import_ctranslate2

        return "cuda" if import_ctranslate2().get_cuda_device_count() > 0 else "cpu"
    except ImportError:
        return "cpu"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or ":" not in argv[0]:
        print("usage: python -m cogkit.boot_once FILE.py:Class", file=sys.stderr)
        return 2
    boot(argv[0])
    from cogkit.snapshot import verify_snapshot
    from models import MODELS

    model = os.environ.get("COGKIT_MODEL") or next((m.name for m in MODELS.values() if m.runner == argv[0]), None)
    problems = verify_snapshot(model, device=device_here()) if model else [f"no model runs {argv[0]}"]
    for problem in problems:
        print(f"boot_once: snapshot not recorded: {problem}", file=sys.stderr)
    if not problems:
        print(f"boot_once: {model}'s boot snapshot is recorded in the image")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
