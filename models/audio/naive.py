"""What a typical predict.py for the audio models does at every boot, for `cogkit bench boot` variant (a).

- Whisper: the source is a CTranslate2 checkpoint, which transformers cannot load, so a typical
  predictor converts it at every boot (into a temporary folder), calls `from_pretrained` and decodes
  with transformers (`models/audio/whisper_transformers.py`, cogkit's own predictor before CTranslate2).
- TTS: `PiperVoice.load` straight from the voice file inside the wheel, no warm-up.

The run() methods are the built predictors' own, so all variants must give the same output.
The source's local path comes in env COGKIT_SOURCE_PATH.
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for predict.py

from predict import SetupTimer, TTSRunner, WhisperRunner, logged_setup  # noqa: E402


def source_path() -> Path:
    return Path(os.environ["COGKIT_SOURCE_PATH"])


class NaiveWhisperRunner(WhisperRunner):
    """Today's transformers predictor, as a typical predict.py writes it: import torch and
    transformers, convert the CTranslate2 source into a transformers checkpoint, from_pretrained, warm up."""

    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor  # noqa: F401 - timed as imports

        from models.audio.whisper_transformers import TransformersTranscriber, convert_to_transformers, runtime_dtype

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        timer.done("imports")
        folder = Path(tempfile.mkdtemp(prefix="naive-whisper-"))
        convert_to_transformers(source_path(), folder, runtime_dtype())
        timer.done("convert")
        self.transcriber = TransformersTranscriber(folder, "cuda" if torch.cuda.is_available() else "cpu")
        timer.done("load")
        self.warmup()  # a typical predict.py warms up too (the bench's definition of the naive path)
        timer.done("warmup")


class NaiveTTSRunner(TTSRunner):
    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()
        from models.audio.tts import PiperSynthesizer, VitsSynthesizer

        timer.done("imports")
        source = source_path()
        if source.suffix == ".onnx":
            from piper import PiperVoice

            self.synth = PiperSynthesizer(source, "cpu", PiperVoice.load(source).session)  # onnxruntime's defaults
        else:
            self.synth = VitsSynthesizer(source, "cpu")
        timer.done("load")
