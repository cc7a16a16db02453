"""Reading and writing audio files for the audio predictors, with libsndfile (the `soundfile` wheel
bundles it, MP3 included) and scipy for resampling: no ffmpeg needed.

Every problem with an input file becomes an `AudioInputError` whose message names the input field
and says what is wrong (empty, not audio, an unsupported container, truncated, silent, too long).
"""

import re
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

READ_FORMATS = "wav, flac, ogg (Vorbis/Opus) or mp3"
WRITE_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}
# Below about -70 dBFS nothing audible is left to transcribe.
SILENCE_PEAK = 10 ** (-70 / 20)

# Containers people send that libsndfile cannot decode: name them instead of "not audio".
KNOWN_UNSUPPORTED = [
    (4, b"ftyp", "MP4/M4A (AAC)"),
    (0, b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
    (0, b"\x30\x26\xb2\x75", "WMA/ASF"),
    (0, b"#!AMR", "AMR"),
]


class AudioInputError(ValueError):
    pass


@dataclass
class DecodedAudio:
    samples: np.ndarray  # mono float32 at `sample_rate`
    sample_rate: int
    source_rate: int
    source_channels: int
    source_format: str

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def unsupported_container(head: bytes) -> str | None:
    for offset, magic, name in KNOWN_UNSUPPORTED:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def looks_truncated(path: Path, info, frames_read: int) -> bool:
    # WAV/AIFF: libsndfile notes a chunk longer than the file as "data : N (should be M)".
    if re.search(r"^data\s*:.*should be", info.extra_info or "", re.MULTILINE):
        return True
    # MP3 and others: the header promises more frames than the stream holds.
    return info.frames > 0 and frames_read < 0.95 * info.frames - info.samplerate * 0.1


def read_audio(path, field: str = "audio", sample_rate: int = 16000, max_seconds: float = 3 * 3600,
               reject_silence: bool = True) -> DecodedAudio:
    """Decode `path` to mono float32 at `sample_rate`; raise AudioInputError naming `field`."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise AudioInputError(f"{field}: the file is empty")
    head = path.read_bytes()[:64] if path.stat().st_size < 64 else path.open("rb").read(64)
    if name := unsupported_container(head):
        raise AudioInputError(f"{field}: {name} files are not supported; send {READ_FORMATS}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioInputError(f"{field}: not a readable audio file ({_reason(e)}); send {READ_FORMATS}") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioInputError(f"{field}: the file has no audio stream; send {READ_FORMATS}")
    if info.duration > max_seconds:
        raise AudioInputError(f"{field}: {info.duration:.0f} s of audio is longer than the limit of "
                              f"{max_seconds:.0f} s")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioInputError(f"{field}: the {info.format} file is truncated or corrupt "
                              f"({_reason(e)})") from None
    if len(data) == 0:
        raise AudioInputError(f"{field}: the file contains no audio samples")
    if looks_truncated(path, info, len(data)):
        raise AudioInputError(f"{field}: the {info.format} file is truncated (it ends before the "
                              "length its header declares)")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise AudioInputError(f"{field}: the file holds invalid (NaN or infinite) samples")
    peak = float(np.abs(mono).max())
    if reject_silence and peak < SILENCE_PEAK:
        raise AudioInputError(f"{field}: the audio is silent (peak level "
                              f"{20 * np.log10(max(peak, 1e-12)):.0f} dBFS); nothing to transcribe")
    return DecodedAudio(resample(mono, rate, sample_rate), sample_rate, rate, info.channels, info.format)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return np.ascontiguousarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(rate, target)
    return resample_poly(samples, target // g, rate // g).astype(np.float32)


def write_audio(samples: np.ndarray, sample_rate: int, path: Path, fmt: str) -> Path:
    """Write mono float samples in [-1, 1] as wav (16-bit), flac (16-bit) or mp3."""
    import soundfile as sf

    container, subtype = WRITE_FORMATS[fmt]
    samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    if fmt == "mp3" and sample_rate not in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000):
        samples, sample_rate = resample(samples, sample_rate, 24000), 24000
    sf.write(str(path), samples, sample_rate, format=container, subtype=subtype)
    return path


def _reason(e: Exception) -> str:
    # libsndfile's messages start with "Error opening '/tmp/…': "; the path means nothing to a caller.
    text = str(e).split("\n")[0]
    return re.sub(r"^Error opening '.*?': ", "", text).strip().rstrip(".")
