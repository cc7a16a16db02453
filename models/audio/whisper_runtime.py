"""Running Whisper on decoded audio: CTranslate2 through faster-whisper, on the folder that
`cogkit build-weights whisper` wrote (weights already in the compute type, so loading does no work).

Defaults: beam search of width DEFAULT_BEAM at one temperature, no fallback, sequential 30 s windows
that move on at the last predicted timestamp, no voice-activity filter, as cogkit's transformers
predictor did apart from its greedy search. Options add wider beams or greedy decoding, the Silero
voice-activity filter faster-whisper ships (an ONNX model run by onnxruntime) and batched long-form
transcription (the audio cut at pauses into chunks of up to 30 s, decoded in batches).
Nothing here imports torch or transformers.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.audio.whisper_languages import LANGUAGES, TO_LANGUAGE_CODE

SAMPLE_RATE = 16000
# Chosen by `python -m models.audio.whisper_bench` (README, Audio): on int8 CPU weights, width 2 makes
# no more word errors than the transformers fp32 greedy predictor it replaced (greedy int8 ties it) and
# runs 3.6x faster than it; widths 3 and 5 make fewer errors, at 3.2x and 2.9x.
DEFAULT_BEAM = 2


class TranscriptionInputError(ValueError):
    pass


@dataclass
class Transcript:
    text: str
    language: str
    segments: list[dict] = field(default_factory=list)


def language_code(name: str | None) -> str | None:
    """'en', 'english' or 'English' -> 'en'; None or 'auto' -> None."""
    if name is None or name.strip().lower() in ("", "auto"):
        return None
    key = name.strip().lower()
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise TranscriptionInputError(f"language: {name!r} is not a Whisper language; use a code such as "
                                  "'en', 'de', 'fr' or a name such as 'german', or 'auto'")



def checked_language(language: str | None, task: str, multilingual: bool) -> str | None:
    """The language code to decode in, after refusing what an English-only model cannot do."""
    code = language_code(language)
    if not multilingual:
        if code not in (None, "en"):
            raise TranscriptionInputError(f"language: this Whisper model is English-only; {language!r} "
                                          "needs a multilingual model (e.g. hf:openai/whisper-small)")
        if task != "transcribe":
            raise TranscriptionInputError("task: translate needs a multilingual Whisper model; this one "
                                          "is English-only")
    return code

def runtime_device() -> str:
    from cogkit.ct2_cpu import import_ctranslate2

    ctranslate2 = import_ctranslate2()

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def import_faster_whisper():
    """Import faster-whisper without importing PyAV (~35 ms of its ~110 ms here). faster-whisper
    imports av at the top of faster_whisper/audio.py for decode_audio(), which cogkit never calls: the
    predictors decode with libsndfile (models/audio/audio_io.py) and hand faster-whisper samples.
    faster_whisper.audio keeps a stand-in for av that imports the real one when decode_audio() first
    uses it; any other `import av` imports the real one (cogkit/deferred_imports.py)."""
    from cogkit.deferred_imports import deferred

    with deferred("av"):
        import faster_whisper
    return faster_whisper


class ModelLoad:
    """CTranslate2 reading a built folder on a thread, started before faster-whisper is imported:
    CTranslate2 releases the GIL while it reads and prepares the weights, so the caller imports
    faster-whisper and parses tokenizer.json (both hold the GIL) meanwhile. WhisperModel's own
    constructor does these one after the other."""

    def __init__(self, folder: Path, device: str, compute_type: str, threads: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        from cogkit.ct2_cpu import import_ctranslate2

        ctranslate2 = import_ctranslate2()

        self.folder = Path(folder)
        if not (self.folder / "model.bin").is_file():
            raise FileNotFoundError(f"{folder} holds no CTranslate2 model.bin (weights built by an older cogkit "
                                    "hold a transformers checkpoint); run `cogkit build-weights whisper`")
        if threads is None:  # 0 lets CTranslate2 follow OMP_NUM_THREADS (4 when unset)
            threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        pool = ThreadPoolExecutor(1, thread_name_prefix="ctranslate2-load")
        self.ct2 = pool.submit(ctranslate2.models.Whisper, str(self.folder), device=device,
                               compute_type=compute_type, intra_threads=threads)
        pool.shutdown(wait=False)  # the thread ends after this one load

    def model(self, tokenizer=None):
        """faster-whisper's WhisperModel: parses tokenizer.json here (unless given a `tokenizer`, such
        as a snapshot's: models/audio/whisper_tokenizer.py), then waits for CTranslate2."""
        if tokenizer is None:
            import tokenizers

            tokenizer = tokenizers.Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        return preloaded_whisper_model(self.ct2.result(), tokenizer, self.folder)


def load_model(folder: Path, device: str, compute_type: str, threads: int | None = None):
    """faster-whisper's WhisperModel on a built folder, the CTranslate2 model and the tokenizer loaded
    side by side (ModelLoad)."""
    return ModelLoad(folder, device, compute_type, threads).model()


def preloaded_whisper_model(model, tokenizer, folder: Path):
    """A WhisperModel around an already loaded CTranslate2 model and tokenizer: the attributes
    faster-whisper's constructor sets (pinned faster-whisper; tests/test_audio_units.py compares every
    attribute with a WhisperModel built the usual way, so an upgrade that changes them fails there)."""
    from faster_whisper import WhisperModel
    from faster_whisper.utils import get_logger

    from models.audio.whisper_features import BlockwiseFeatureExtractor

    whisper = WhisperModel.__new__(WhisperModel)
    whisper.logger = get_logger()
    whisper.model, whisper.hf_tokenizer = model, tokenizer
    whisper.feat_kwargs = whisper._get_feature_kwargs(str(folder))
    # The same features as faster-whisper's extractor, made a block at a time (whisper_features.py).
    whisper.feature_extractor = BlockwiseFeatureExtractor(**whisper.feat_kwargs)
    whisper.input_stride = 2
    whisper.num_samples_per_token = whisper.feature_extractor.hop_length * whisper.input_stride
    whisper.frames_per_second = whisper.feature_extractor.sampling_rate // whisper.feature_extractor.hop_length
    whisper.tokens_per_second = whisper.feature_extractor.sampling_rate // whisper.num_samples_per_token
    whisper.time_precision = 0.02
    whisper.max_length = 448
    return whisper


class Transcriber:
    def __init__(self, folder: Path, device: str, compute_type: str, threads: int | None = None,
                 loading: ModelLoad | None = None, tokenizer=None):
        """`loading`: a ModelLoad of this folder already under way (setup starts it before importing
        faster-whisper); without one, the load starts here. `tokenizer`: one to use instead of parsing
        the folder's tokenizer.json (a snapshot's SnapshotTokenizer)."""
        loading = loading or ModelLoad(folder, device, compute_type, threads)
        faster_whisper = import_faster_whisper()
        self.model = loading.model(tokenizer)
        self.batched = faster_whisper.BatchedInferencePipeline(self.model)
        self.multilingual = bool(self.model.model.is_multilingual)

    def check_options(self, language: str | None, task: str, vad_filter: bool, batch_size: int) -> str | None:
        code = checked_language(language, task, self.multilingual)
        if batch_size > 1 and not vad_filter:
            raise TranscriptionInputError("batch_size: batched transcription cuts the audio at the pauses the "
                                          "voice-activity filter finds; set vad_filter to true, or batch_size to 1")
        return code

    def transcribe(self, samples: np.ndarray, language: str | None = None, task: str = "transcribe",
                   timestamps: str = "segment", temperature: float = 0.0, beam_size: int = DEFAULT_BEAM,
                   vad_filter: bool = False, batch_size: int = 1) -> Transcript:
        code = self.check_options(language, task, vad_filter, batch_size)
        if not self.multilingual:
            code = "en"
        options = dict(
            language=code, task=task, beam_size=beam_size, best_of=1,
            temperature=[temperature],  # one temperature: no fallback, as before
            condition_on_previous_text=False, no_speech_threshold=None,
            without_timestamps=timestamps == "none", word_timestamps=timestamps == "word",
            vad_filter=vad_filter,
        )
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if batch_size > 1:
            segments, info = self.batched.transcribe(samples, batch_size=batch_size, **options)
        else:
            segments, info = self.model.transcribe(samples, **options)
        duration = len(samples) / SAMPLE_RATE
        found = [seg for s in segments if (seg := self.segment(s, duration, timestamps == "word"))["text"]]
        for i, seg in enumerate(found):
            seg["id"] = i
        text = " ".join(s["text"] for s in found).strip()
        if timestamps == "none":
            found = [{"id": 0, "start": 0.0, "end": round(duration, 2), "text": text}] if text else []
        return Transcript(text=text, language=info.language, segments=found)

    @staticmethod
    def segment(seg, duration: float, words: bool) -> dict:
        start = min(float(seg.start), duration)
        end = min(max(float(seg.end), start), duration)
        out = {"id": 0, "start": round(start, 2), "end": round(end, 2), "text": seg.text.strip()}
        if words:
            out["words"] = [{"word": w.word.strip(), "start": round(min(float(w.start), duration), 2),
                             "end": round(min(max(float(w.end), float(w.start)), duration), 2)}
                            for w in (seg.words or []) if w.word.strip()]
        return out
