"""The LLM families cogkit runs, and the few things that differ between them.

Llama 1-3.3, Mistral, Qwen2/2.5 and Qwen3 (dense) are one decoder with small variations, all read
from the checkpoint's config.json:

| model_type | q/k/v bias          | o bias         | q/k RMSNorm | sliding window                       |
|------------|---------------------|----------------|-------------|--------------------------------------|
| llama      | attention_bias      | attention_bias | no          | none                                 |
| mistral    | no                  | no             | no          | every layer, when sliding_window set |
| qwen2      | yes                 | no             | no          | layers marked sliding_attention      |
| qwen3      | attention_bias      | attention_bias | yes         | layers marked sliding_attention      |

Rotary position frequencies follow transformers' `modeling_rope_utils` for the rope types
`default`, `linear`, `dynamic`, `yarn` and `llama3`. Anything else is refused at build time with a
message naming what is not supported, never run with silently different numbers.

Parsing a config is plain Python; the frequencies are torch code that torch.compile can trace.
"""

import math

import torch

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


class UnsupportedModelError(ValueError):
    """The checkpoint is a model cogkit's LLM predictor does not run (the message says which part)."""


def check_supported(raw: dict, where: str = "config.json") -> str:
    """The checkpoint's model_type, or a clear refusal naming it."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"source: {where} has model_type {model_type!r}, which cogkit's LLM predictor does not run; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return model_type


def rope_parameters(raw: dict) -> dict:
    """One flat dict with `rope_type`, `rope_theta` and the type's own parameters, from either the
    hub's older form (`rope_theta` + `rope_scaling`) or transformers 5's (`rope_parameters`)."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        raise UnsupportedModelError(f"rope: per-layer-type rope parameters ({', '.join(params)}) are not supported")
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(f"rope: rope_type {rope_type!r} is not supported; "
                                    f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor")) or 1.0
    if partial != 1.0:
        raise UnsupportedModelError(f"rope: partial_rotary_factor {partial} is not supported (only 1.0)")
    params["rope_type"] = rope_type
    theta = params.get("rope_theta") or raw.get("rope_theta") or 10000.0
    params["rope_theta"] = float(theta)
    if rope_type in ("llama3", "yarn"):
        # As transformers does: a top-level value wins, else the model's context length.
        original = raw.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
        params["original_max_position_embeddings"] = original or raw["max_position_embeddings"]
    if rope_type in ("linear", "dynamic", "llama3") and params.get("factor") is None:
        raise UnsupportedModelError(f"rope: rope_type {rope_type!r} needs a factor")
    return params


def config_fields(raw: dict) -> dict:
    """The runtime config (keyword arguments of `models.llm.llama.LlamaConfig`) of a supported family."""
    model_type = check_supported(raw)
    heads = raw["num_attention_heads"]
    layers = raw["num_hidden_layers"]
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"source: hidden_act {act!r} is not supported (only silu)")
    bias = bool(raw.get("attention_bias") or False)
    qkv_bias, o_bias = {"llama": (bias, bias), "mistral": (False, False), "qwen2": (True, False),
                        "qwen3": (bias, bias)}[model_type]
    window, sliding = sliding_layers(raw, model_type, layers)
    eos = raw.get("eos_token_id")
    return {
        "model_type": model_type,
        "vocab_size": raw["vocab_size"],
        "hidden_size": raw["hidden_size"],
        "intermediate_size": raw["intermediate_size"],
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": raw.get("num_key_value_heads") or heads,
        "head_dim": raw.get("head_dim") or raw["hidden_size"] // heads,
        "max_position_embeddings": raw["max_position_embeddings"],
        "rms_norm_eps": raw.get("rms_norm_eps", 1e-6),
        "rope": rope_parameters(raw),
        # transformers' default for all four families: an absent key means a separate lm_head.
        "tie_word_embeddings": bool(raw.get("tie_word_embeddings", False)),
        "bos_token_id": raw.get("bos_token_id"),
        "eos_token_id": [] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
        "attention_bias": qkv_bias,
        "o_proj_bias": o_bias,
        "mlp_bias": bool(raw.get("mlp_bias") or False) if model_type == "llama" else False,
        "qk_norm": model_type == "qwen3",
        "sliding_window": window,
        "sliding_layers": sliding,
    }


def sliding_layers(raw: dict, model_type: str, layers: int) -> tuple[int | None, list[bool]]:
    """The attention window and which layers use it, as transformers decides for each family."""
    if model_type == "llama":
        return None, [False] * layers
    window = raw.get("sliding_window")
    if model_type == "mistral":  # every layer, when the window is set (Mistral 7B v0.1: 4096)
        return window, [window is not None] * layers
    if not raw.get("use_sliding_window", False):  # qwen2, qwen3: off unless asked for
        window = None
    if window is None:
        return None, [False] * layers
    types = raw.get("layer_types")
    if types is None:
        first = raw.get("max_window_layers", 28)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown:
        raise UnsupportedModelError(f"source: layer type {unknown[0]!r} is not supported")
    return window, [t == "sliding_attention" for t in types]


def checkpoint_tensor_names(fields: dict) -> set[str]:
    """The tensors a Hugging Face checkpoint of this config holds (transformers' names; the runtime
    may store some fused), so that a build can say which ones a checkpoint lacks or has extra."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not fields["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for i in range(fields["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        names |= {f"{layer}.input_layernorm.weight", f"{layer}.post_attention_layernorm.weight"}
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.add(f"{layer}.self_attn.{proj}.weight")
            if fields["o_proj_bias" if proj == "o_proj" else "attention_bias"]:
                names.add(f"{layer}.self_attn.{proj}.bias")
        if fields["qk_norm"]:
            names |= {f"{layer}.self_attn.q_norm.weight", f"{layer}.self_attn.k_norm.weight"}
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names.add(f"{layer}.mlp.{proj}.weight")
            if fields["mlp_bias"]:
                names.add(f"{layer}.mlp.{proj}.bias")
    return names


# ---------------------------------------------------------------- rotary frequencies


def inv_frequencies(rope: dict, head_dim: int, max_position_embeddings: int, seq_len=None, device=None):
    """Inverse rotary frequencies ([head_dim / 2], float32) and the factor cos/sin are scaled by.

    `seq_len` (a tensor or int: the largest position + 1) only matters for `dynamic`, whose base
    grows once a sequence runs past the model's context."""
    rope_type, base = rope["rope_type"], rope["rope_theta"]
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    if rope_type == "dynamic" and seq_len is not None:
        factor = rope["factor"]
        if isinstance(seq_len, torch.Tensor):
            seq_len = torch.clamp(seq_len, min=max_position_embeddings).float()
        else:
            seq_len = max(seq_len, max_position_embeddings)
        base = base * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (base ** exponents)
    if rope_type == "linear":
        return inv_freq / rope["factor"], 1.0
    if rope_type == "llama3":
        return llama3_inv_freq(inv_freq, rope), 1.0
    if rope_type == "yarn":
        return yarn_inv_freq(rope, head_dim, max_position_embeddings, device)
    return inv_freq, 1.0


def llama3_inv_freq(inv_freq, rope: dict):
    """Llama 3.1's long-context scaling: long wavelengths slowed by `factor`, short ones kept, a smooth
    blend between."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = rope["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def yarn_inv_freq(rope: dict, head_dim: int, max_position_embeddings: int, device=None):
    """YaRN: interpolate low frequencies, extrapolate high ones, blend linearly between the dimensions
    that turn `beta_fast` and `beta_slow` times over the original context; scale attention."""
    base = rope["rope_theta"]
    original = rope["original_max_position_embeddings"]
    factor = rope.get("factor") or max_position_embeddings / original

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        if rope.get("mscale") and rope.get("mscale_all_dim"):
            attention_factor = float(mscale(factor, rope["mscale"]) / mscale(factor, rope["mscale_all_dim"]))
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = rope.get("beta_fast") or 32, rope.get("beta_slow") or 1

    def correction_dim(rotations):
        return (head_dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolate = (1 - ramp).to(device=device, dtype=torch.float)
    pos_freqs = base ** (torch.arange(0, head_dim, 2).to(device=device, dtype=torch.float) / head_dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv_freq, attention_factor
