"""`cogkit build-weights llm --engine ctranslate2`: the same checkpoint as a CTranslate2 model.

CTranslate2's own converters need transformers and torch and read Hugging Face folders; the build
already holds the checkpoint's tensors (from GGUF or a folder) and its resolved config, so it fills
CTranslate2's decoder spec directly and lets CTranslate2 quantise and save it under `ctranslate2/`
(model.bin, config.json, vocabulary.json); build.convert writes the tokenizer, chat template and
config.json the predictor reads beside it, as for the torch engine.
"""

from pathlib import Path

CT2_FOLDER = "ctranslate2"
# CTranslate2's stored types on CPU; a GPU runs them as float16 / int8_float16 (see ct2_engine.py).
CT2_DTYPES = ("float32", "int8")


# Rope types CTranslate2's decoder computes as transformers does (tests/test_llm_families.py checks
# each family's next-token log-probabilities against transformers).
CT2_ROPE_SCALING = ("default", "linear")


def unsupported_reason(fields: dict) -> str | None:
    """Why this family/config cannot be run on CTranslate2 as transformers runs it, or None.
    Measured, not assumed: with CTranslate2 4.8.5, sliding windows (its window also bounds the KV cache
    it keeps) and llama3 rope scaling gave other greedy tokens than transformers on tiny checkpoints."""
    if any(fields["sliding_layers"]):
        return "sliding-window attention"
    if fields["rope"]["rope_type"] not in CT2_ROPE_SCALING:
        return f"rope scaling {fields['rope']['rope_type']!r}"
    return None


def write_ct2_model(out: Path, state: dict, fields: dict, tokenizer_json: str, tokenizer_config: dict,
                    dtype: str) -> None:
    """`out/ctranslate2/`; `state` holds the fused tensors of models.llm.llama (qkv_proj, gate_up_proj)."""
    from ctranslate2.specs import attention_spec, common_spec, transformer_spec

    if dtype not in CT2_DTYPES:
        raise ValueError(f"dtype: the ctranslate2 engine builds {' or '.join(CT2_DTYPES)}, not {dtype}")
    reason = unsupported_reason(fields)
    if reason:
        raise ValueError(f"engine: {fields['model_type']} with {reason} is not supported by the ctranslate2 "
                         "build; build with --engine torch")
    heads, kv_heads = fields["num_attention_heads"], fields["num_key_value_heads"]
    head_dim = fields["head_dim"]
    rope = fields["rope"]
    scaling = {"default": None, "linear": attention_spec.RotaryScalingType.Linear}[rope["rope_type"]]
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        fields["num_hidden_layers"], heads, pre_norm=True, activation=common_spec.Activation.SWISH,
        ffn_glu=True, rms_norm=True, rotary_dim=0, rotary_interleave=False,  # rotate-half, whole head
        rotary_base=rope["rope_theta"], rotary_scaling_type=scaling,
        rotary_scaling_factor=rope.get("factor", 1),
        num_heads_kv=None if kv_heads == heads else kv_heads,
        head_dim=None if head_dim * heads == fields["hidden_size"] else head_dim,
        qk_norm=fields["qk_norm"])
    numpy = {k: v.float().numpy() for k, v in state.items()}
    decoder = spec.decoder
    decoder.scale_embeddings = False
    decoder.embeddings.weight = numpy["model.embed_tokens.weight"]
    decoder.layer_norm.gamma = numpy["model.norm.weight"]
    for i, layer in enumerate(decoder.layer):
        p = f"model.layers.{i}."
        layer.self_attention.layer_norm.gamma = numpy[p + "input_layernorm.weight"]
        if fields["qk_norm"]:  # Qwen3: RMSNorm of each query and key head before the rotation
            layer.self_attention.q_norm.gamma = numpy[p + "self_attn.q_norm.weight"]
            layer.self_attention.k_norm.gamma = numpy[p + "self_attn.k_norm.weight"]
        layer.ffn.layer_norm.gamma = numpy[p + "post_attention_layernorm.weight"]
        # CTranslate2's fused attention input is q, k, v stacked: the order of our qkv_proj.
        set_linear(layer.self_attention.linear[0], numpy, p + "self_attn.qkv_proj")
        set_linear(layer.self_attention.linear[1], numpy, p + "self_attn.o_proj")
        gate_w, up_w = split_half(numpy[p + "mlp.gate_up_proj.weight"])
        layer.ffn.linear_0.weight, layer.ffn.linear_0_noact.weight = gate_w, up_w
        if p + "mlp.gate_up_proj.bias" in numpy:
            layer.ffn.linear_0.bias, layer.ffn.linear_0_noact.bias = split_half(numpy[p + "mlp.gate_up_proj.bias"])
        set_linear(layer.ffn.linear_1, numpy, p + "mlp.down_proj")
    decoder.projection.weight = numpy.get("lm_head.weight", numpy["model.embed_tokens.weight"])

    tokens = vocabulary(tokenizer_json, fields["vocab_size"])
    spec.register_vocabulary(tokens)
    eos = fields["eos_token_id"]
    spec.config.eos_token = tokens[eos[0]] if eos else tokenizer_config.get("eos_token")
    bos = fields["bos_token_id"]
    spec.config.bos_token = tokens[bos] if bos is not None else spec.config.eos_token
    spec.config.unk_token = tokens[0]  # unused: prompts are given as the tokenizer's own tokens
    spec.config.layer_norm_epsilon = fields["rms_norm_eps"]
    spec.validate()
    spec.optimize(quantization=dtype)
    (out / CT2_FOLDER).mkdir()
    spec.save(str(out / CT2_FOLDER))


def set_linear(spec, numpy: dict, name: str) -> None:
    spec.weight = numpy[name + ".weight"]
    if name + ".bias" in numpy:
        spec.bias = numpy[name + ".bias"]


def split_half(array):
    half = array.shape[0] // 2
    return array[:half], array[half:]


def vocabulary(tokenizer_json: str, vocab_size: int) -> list[str]:
    """Token strings by id (CTranslate2 speaks tokens, the predictor ids): the tokenizer's vocabulary
    and added tokens, padded to the model's vocab_size (embedding rows no tokenizer entry uses)."""
    from tokenizers import Tokenizer

    by_id = {i: t for t, i in Tokenizer.from_str(tokenizer_json).get_vocab(with_added_tokens=True).items()}
    return [by_id.get(i, f"<unused_{i}>") for i in range(vocab_size)]
