"""Fixed inputs for `cogkit bench boot whisper|tts`. Cheap to import (no numpy, no torch)."""

import base64
from pathlib import Path

FOX_CLIP = Path(__file__).resolve().parent / "assets" / "quick_brown_fox.ogg"
FOX_TEXT = "The quick brown fox jumps over the lazy dog."


def fox_clip_uri() -> str:
    """The Piper voice saying FOX_TEXT (16 kHz Ogg Vorbis, 19 kB) as a data URI, as a client sends a file."""
    return "data:audio/ogg;base64," + base64.b64encode(FOX_CLIP.read_bytes()).decode()
