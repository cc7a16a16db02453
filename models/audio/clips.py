"""Fixed inputs for `cogkit bench boot whisper|tts`. Cheap to import (no numpy, no torch)."""

import base64
from pathlib import Path

FOX_CLIP = Path(__file__).resolve().parent / "assets" / "quick_brown_fox.ogg"
FOX_TEXT = "The quick brown fox jumps over the lazy dog."


def fox_clip_uri() -> str:
    """The Piper voice saying FOX_TEXT (16 kHz Ogg Vorbis, 19 kB) as a data URI, as a client sends a file."""
    return "data:audio/ogg;base64," + base64.b64encode(FOX_CLIP.read_bytes()).decode()


# Real speech (public domain): five utterances from LibriVox's reading of Sense and Sensibility,
# chapter 1, as shipped with their transcripts in pocketsphinx 5.1.1's source distribution on PyPI
# (test/data/librivox); joined and stored as 16 kHz Ogg Vorbis. The reader's repeated "a" is kept.
REAL_CLIP = FOX_CLIP.parent / "sense_and_sensibility_librivox.ogg"
REAL_TEXT = ("and mister john dashwood had then leisure to consider how much there might be prudently in his "
             "power to do for them he was not an ill disposed young man unless to be rather cold hearted and "
             "rather selfish is to be ill disposed had he married a more a amiable woman he might have been "
             "made still more respectable than he was he might even have been made amiable himself")
# Sentences for the word error rate, spoken by the project's Piper voice at benchmark time.
WER_SENTENCES = FOX_CLIP.parent / "wer_sentences.txt"


def wer_sentences() -> list[str]:
    return [line.strip() for line in WER_SENTENCES.read_text().splitlines() if line.strip()]
