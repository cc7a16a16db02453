"""A small Llama decoder in plain PyTorch, in the spirit of gpt-fast, built for batched decoding.

The same decoder runs Mistral, Qwen2/2.5 and Qwen3: what differs between the families (biases, q/k
norms, sliding windows, rope scaling) is read from config.json by `models/llm/families.py`.
Parameter names follow Hugging Face's `LlamaForCausalLM`, except that the query/key/value projections
are one `qkv_proj` and the MLP's gate/up projections one `gate_up_proj` (as in Phi-3): one matmul
instead of three (two) per layer. The build step stores them fused; `fuse_projections` also fuses an
unfused checkpoint at load. The module is built on the `meta` device and its tensors are assigned
from the memory-mapped safetensors file: no random initialisation, no extra copy.

The KV cache holds `slots` sequences side by side. One forward call runs `B` consecutive slots
(`first_slot` .. `first_slot + B - 1`), each with `T` new tokens at its own positions, and attends
only over the filled part of the cache (up to the largest position in the batch). A decode step is
`B` sequences x 1 token; a prefill is 1 sequence x `T` tokens.
"""

import ctypes
import json
import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.llm.families import inv_frequencies


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope: dict = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    model_type: str = "llama"
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    attention_bias: bool = False  # q, k and v projections
    o_proj_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm of each query and key head before the rotation (Qwen3)
    sliding_window: int | None = None
    sliding_layers: list[bool] = field(default_factory=list)  # which layers see only the window

    def __post_init__(self):
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        self.sliding_layers = list(self.sliding_layers) or [False] * self.num_hidden_layers

    @classmethod
    def from_file(cls, path: Path) -> "LlamaConfig":
        from models.llm.families import config_fields

        return cls(**config_fields(json.loads(Path(path).read_text())))

    def to_hf_dict(self) -> dict:
        """The config.json that transformers reads as this family's config, too (here: llama)."""
        rope = dict(self.rope)
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
                "max_position_embeddings": self.max_position_embeddings, "rms_norm_eps": self.rms_norm_eps,
                "rope_parameters": rope, "rope_theta": rope["rope_theta"],
                "tie_word_embeddings": self.tie_word_embeddings, "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id, "attention_bias": self.attention_bias,
                "mlp_bias": self.mlp_bias}


FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def fuse_projections(state: dict) -> dict:
    """Concatenate q/k/v and gate/up weights (and biases) of every layer into the fused names."""
    for key in [k for k in state if k.endswith(".self_attn.q_proj.weight")]:
        prefix = key[: -len("self_attn.q_proj.weight")]
        for fused, parts in FUSED.items():
            for kind in ("weight", "bias"):
                names = [f"{prefix}{p}.{kind}" for p in parts]
                if all(n in state for n in names):
                    state[f"{prefix}{fused}.{kind}"] = torch.cat([state.pop(n) for n in names])
    return state


def split_projections(state: dict, cfg: LlamaConfig) -> dict:
    """The inverse of `fuse_projections`: Hugging Face's names, for peers and transformers."""
    hd = cfg.head_dim
    sizes = {"self_attn.qkv_proj": [cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd,
                                    cfg.num_key_value_heads * hd],
             "mlp.gate_up_proj": [cfg.intermediate_size, cfg.intermediate_size]}
    out = {}
    for name, t in state.items():
        fused = next((f for f in FUSED if f".{f}." in name), None)
        if fused is None:
            out[name] = t
            continue
        prefix, kind = name.split(f".{fused}.")
        for part, piece in zip(FUSED[fused], torch.split(t, sizes[fused]), strict=True):
            out[f"{prefix}.{part}.{kind}"] = piece.contiguous()
    return out


class Linear(nn.Linear):
    # oneDNN's blocked copy of `weight` (see `cpu_layouts`), read instead of `weight` while
    # `use_packed` is set (`Llama.use_packed_weights`).
    packed: torch.Tensor | None = None
    use_packed: bool = False

    def reset_parameters(self):
        # Weights always come from the checkpoint. Initialising on `meta` would also import torch's
        # decomposition tables (sympy and friends): about a second of boot time for nothing.
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (one float scale per output row), run by the CPU's int8
    GEMM (fbgemm): activations are quantised per call, weights are read at a quarter of float32's
    bytes. Built from the `weight` (int8) and `scale` (float32) tensors a `--dtype int8` build stores.

    Each activation row is divided by its own absmax, so that it lies in [-1, 1], and quantised with
    fixed parameters that fbgemm is given rather than picks: a row's rounding depends on nothing else
    in the call, so its result is bit-identical alone or batched, and each row gets the precision of
    its own range (per-row scaling). fbgemm's dynamic linear would pick one scale for the whole call
    from its min and max. The absmax and the bias are applied after the GEMM."""

    X_SCALE, X_ZERO_POINT = 2 / 255, 128  # [-1, 1] -> uint8 0..255

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.float()
        with warnings.catch_warnings():  # quantized tensors are marked deprecated but still the fast path
            warnings.simplefilter("ignore")
            q = torch._make_per_channel_quantized_tensor(
                weight.contiguous(), scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            self.packed = torch.ops.quantized.linear_prepack(q, None)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weight [out, in] and its scale per output row, as built (for another engine's graph)."""
        q = torch.ops.quantized.linear_unpack(self.packed)[0]
        return q.int_repr(), q.q_per_channel_scales().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        # (abs + amax: linalg.vector_norm(inf) does the same 4-8x slower on several rows)
        absmax = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            rows / absmax, self.X_SCALE, self.X_ZERO_POINT, self.packed).mul_(absmax)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


# The int8 weights use -63..63, seven bits. fbgemm's AVX2 and AVX-512 kernels (all but VNNI's) add
# pairs of uint8 x int8 products in int16 with saturation: with weights up to 127 and activations
# up to 255 a pair reaches 64,770 and is clipped at 32,767, while 2 x 255 x 63 = 32,130 fits. On an
# AVX2-only CPU, weights to 127 gave the tiny test model logits at cosine 0.926 of float32's, 0.996
# with 63 (tests/test_llm_int8.py). Seven bits on the weights rather than on the activations
# (PyTorch's `reduce_range`): on SmolLM2-135M, mean KL divergence from float32's next-token
# distribution over a 150-token paragraph 0.047, against 0.147 for seven-bit activations and 0.061
# for eight-bit weights computed exactly (what a VNNI CPU gives); the activations carry the outlier
# channels. One range on every CPU: a text does not depend on the machine's instruction set.
INT8_LEVELS = 63


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 in -INT8_LEVELS..INT8_LEVELS: weight ~= q * scale[:, None]."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / INT8_LEVELS).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return q, scale


def narrowed_int8(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of an int8 build made before INT8_LEVELS (-127..127), brought into its range."""
    factor = 127 / INT8_LEVELS
    return torch.round(q.float() / factor).clamp(-INT8_LEVELS, INT8_LEVELS).to(torch.int8), scale * factor


class Embedding(nn.Embedding):
    def reset_parameters(self):
        pass


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused op instead of six, to the same numbers
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalise in float32 whatever the storage dtype, as the reference implementation does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_table(cfg: LlamaConfig, dtype: torch.dtype, device) -> torch.Tensor:
    """cos and sin of every position in the context, stacked: [2, context, head_dim]. Computed once.
    The first half of each sin row is negated: `apply_rope` then needs no negation of its own.
    (Dynamic scaling only changes frequencies past the context, which the model never reaches.)"""

    inv_freq, scale = inv_frequencies(cfg.rope, cfg.head_dim, cfg.max_position_embeddings, None, device)
    freqs = torch.arange(cfg.max_position_embeddings, device=device).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin() * scale
    sin[:, : cfg.head_dim // 2] *= -1
    return torch.stack((emb.cos() * scale, sin)).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate each head's halves: x * cos + (-x2, x1) * sin, with the sign inside `signed_sin`."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


# A decode step of an int8 model (rows that must not depend on each other) attends over a number of
# keys rounded up to a multiple of this, the keys past each row's own masked. CPU SDPA's rounding
# depends on how many keys it is given, masked ones included, but not, measured, between two counts
# that are both multiples of 16 (its vectors' width: AVX-512 16 floats, AVX2 8): a key then lands in
# the same lane of the same vector whatever the count, and the masked ones add exact zeros (0 of 628
# (row length, count) pairs differed with counts rounded to 16, 0 of 607 rounded to 32, crossing its
# 512-key blocks too, with ATEN_CPU_CAPABILITY=avx2 and =default as well; 608 of 652 differed for
# counts not so rounded). So one masked call serves the whole batch and each row comes out as it does
# alone, where before each row had an attention call of its own over exactly its keys (now a step
# 2-10 % faster at 4-16 rows). The count is capped at the cache's length, a multiple of 256 or the
# context: with a context that is not a multiple of this, rows within 32 tokens of its end may round
# differently alone and batched.
ROW_KEYS_MULTIPLE = 32


@dataclass
class Batch:
    """Where one forward call reads and writes the KV cache."""
    first_slot: int
    positions: torch.Tensor  # [B, T] absolute positions of the new tokens
    slots: torch.Tensor  # [B, 1] the cache slot of each row
    kv_len: int  # keys attended: cache positions 0 .. kv_len-1 (the filled part)
    # Added to the attention scores: 0 where a query may see a key, -inf elsewhere. Made once per
    # forward: SDPA turns a boolean mask into this in every layer's call.
    mask: torch.Tensor  # [B, 1, T, kv_len]
    window_mask: torch.Tensor  # the same for sliding-window layers (Mistral, some Qwen)
    # Set when the rows must not depend on each other (int8 models): in a prefill of several prompts
    # padded at the end, each row's attention then runs alone over its own tokens and filled length
    # (`row_tokens`, see Attention.forward); a decode step's kv_len is rounded (ROW_KEYS_MULTIPLE).
    row_kv_lens: list[int] | None = None
    row_tokens: list[int] | None = None  # each row's own tokens (the rest is padding), set with row_kv_lens
    # The rotary cos and sin of each new token ([B, 1, T, hd]: broadcast over heads), set by Llama.
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None

    @classmethod
    def make(cls, first_slot: int, positions: torch.Tensor, kv_len: int | None = None,
             window: int | None = None, dtype: torch.dtype = torch.float32) -> "Batch":
        kv_len = keys_to_attend(positions, kv_len)
        keys = torch.arange(kv_len, device=positions.device)[None, None, :]
        sees = (keys <= positions[:, :, None])[:, None]
        mask = additive_mask(sees, dtype)
        window_mask = additive_mask(sees & (keys > positions[:, :, None] - window)[:, None], dtype) if window else mask
        slots = torch.arange(first_slot, first_slot + positions.shape[0], device=positions.device)[:, None]
        return cls(first_slot, positions, slots, kv_len, mask, window_mask)


def keys_to_attend(positions: torch.Tensor, kv_len: int | None) -> int:
    """How many cache positions a call attends: `kv_len` when the caller knows it (no device sync;
    it may round it up), else up to the last position written."""
    return int(positions.max()) + 1 if kv_len is None else kv_len


def additive_mask(sees: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as SDPA converts it: 0 where True, -inf where False."""
    return torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill_(~sees, float("-inf"))


class KVCache(nn.Module):
    def __init__(self, slots: int, n_kv_heads: int, length: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (slots, n_kv_heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, batch: Batch, k: torch.Tensor, v: torch.Tensor):
        """Write the new keys/values ([B, kvH, T, hd]) and return views of the filled part."""
        # Advanced indices around a slice put their dims first: the target is [B, T, kvH, hd].
        self.k[batch.slots, :, batch.positions] = k.transpose(1, 2)
        self.v[batch.slots, :, batch.positions] = v.transpose(1, 2)
        sl = slice(batch.first_slot, batch.first_slot + k.shape[0])
        return self.k[sl, :, : batch.kv_len], self.v[sl, :, : batch.kv_len]

    def move_slot(self, src: int, dst: int, length: int) -> None:
        self.k[dst, :, :length] = self.k[src, :, :length]
        self.v[dst, :, :length] = self.v[src, :, :length]


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, sliding: bool = False):
        super().__init__()
        self.cfg = cfg
        self.sliding = sliding
        hd = cfg.head_dim
        self.q_size, self.kv_size = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=cfg.o_proj_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, batches: list[Batch]) -> torch.Tensor:
        """x: the rows of every batch, in order ([B, T, hidden] for one batch; [1, N, hidden] for
        several, each batch's B x T rows flattened). The projections run once over all rows (one
        read of the weights); attention runs per batch, each over its own cache slots."""
        heads = self.cfg.num_attention_heads + 2 * self.cfg.num_key_value_heads
        qkv = self.qkv_proj(x).view(-1, heads, self.cfg.head_dim)
        ys, start = [], 0
        for batch in batches:
            b, t = batch.positions.shape
            ys.append(self.attend(qkv[start:start + b * t].view(b, t, heads, -1).transpose(1, 2), batch))
            start += b * t
        y = ys[0] if len(ys) == 1 else torch.cat(ys)
        return self.o_proj(y.view(*x.shape[:-1], self.q_size))

    def attend(self, heads: torch.Tensor, batch: Batch) -> torch.Tensor:
        """One batch's attention: its query/key/value heads ([B, heads, T, hd]) rotated, the keys and
        values written to the cache, the output as [B * T, q_size] rows."""
        b, _, t, _ = heads.shape
        n_q, n_kv = self.cfg.num_attention_heads, self.cfg.num_key_value_heads
        cos, sin = batch.cos, batch.sin
        if self.cfg.qk_norm:
            q, k, v = heads.split((n_q, n_kv, n_kv), dim=1)
            q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        else:  # the query and key heads rotate in one go
            qk, v = heads.split((n_q + n_kv, n_kv), dim=1)
            q, k = apply_rope(qk, cos, sin).split((n_q, n_kv), dim=1)
        k, v = self.kv_cache.update(batch, k, v)
        mask = batch.window_mask if self.sliding else batch.mask
        if batch.row_kv_lens is not None and b > 1 and t > 1:
            # Prompts prefilled together (int8): each row attends with the queries, keys and mask it
            # would have prefilled alone; the padding's queries get zeros (their output is never used).
            y = q.new_zeros(q.shape)
            for i, (n, m) in enumerate(zip(batch.row_kv_lens, batch.row_tokens, strict=True)):
                y[i:i + 1, :, :m] = F.scaled_dot_product_attention(
                    q[i:i + 1, :, :m], k[i:i + 1, :, :n], v[i:i + 1, :, :n], attn_mask=mask[i:i + 1, :, :m, :n],
                    enable_gqa=True)
        else:  # (a decode step of an int8 model too: its key count is a multiple of ROW_KEYS_MULTIPLE)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return y.transpose(1, 2).reshape(b * t, self.q_size)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, sliding: bool = False):
        super().__init__()
        self.self_attn = Attention(cfg, sliding)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, batches: list[Batch]):
        x = x + self.self_attn(self.input_layernorm(x), batches)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, sliding) for sliding in cfg.sliding_layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.cache_slots = 0
        self.cache_len = 0
        # A buffer, not a plain attribute: torch.compile treats a plain tensor attribute as an input
        # with dynamic sizes, and its first dim (2: cos and sin) then shared a symbol with a two-token
        # prefill, specialising the compiled prefill to exactly two tokens.
        self.register_buffer("rope", None, persistent=False)
        # True when every projection is an Int8Linear: a row's logits then depend on nothing else in
        # its batch (given per-row attention lengths), so greedy text batched equals batch-1 text.
        self.rows_independent = False
        self.packed_in_use = False  # use_packed_weights switched the projections to their packed copies
        # onnxruntime's graph of this forward (models/llm/ort_forward.py), once built: the engine's prompt
        # chunks and decode steps run on it.
        self.ort_forward = None

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    def setup_cache(self, max_len: int, slots: int = 1) -> None:
        """Make room for `slots` sequences of up to `max_len` tokens; grows (keeping what the cache
        holds) and never shrinks."""
        if max_len <= self.cache_len and slots <= self.cache_slots:
            return
        # Round up so that nearby request sizes share one allocation.
        max_len = min(self.cfg.max_position_embeddings,
                      256 * math.ceil(max(max_len, self.cache_len) / 256))
        slots = max(slots, self.cache_slots)
        for layer in self.model.layers:
            old = layer.self_attn.kv_cache
            new = KVCache(slots, self.cfg.num_key_value_heads, max_len, self.cfg.head_dim, self.dtype,
                          self.device)
            if old is not None:
                new.k[: self.cache_slots, :, : self.cache_len] = old.k
                new.v[: self.cache_slots, :, : self.cache_len] = old.v
            layer.self_attn.kv_cache = new
        self.cache_slots, self.cache_len = slots, max_len
        if self.rope is None:
            self.rope = rope_table(self.cfg, self.dtype, self.device)

    def use_packed_weights(self, on: bool) -> None:
        """Whether the next calls read the float32 projections' packed copies, where `cpu_layouts`
        made them: the engine sets it for every call of several rows (a batch's decode step, a
        prompt) and clears it for a lone sequence's decode step."""
        self.packed_in_use = False
        for module in self.modules():
            if isinstance(module, Linear) and module.packed is not None:
                module.use_packed = on
                self.packed_in_use = on

    def has_packed_weights(self) -> bool:
        """Whether the float projections have packed copies (`cpu_layouts`, for an engine that batches)."""
        return any(isinstance(m, Linear) and m.packed is not None for m in self.modules())

    def drop_packed_weights(self) -> int:
        """Free the projections' packed copies and return the bytes freed: once onnxruntime's graph runs
        every forward (it packs the weights its own way), nothing reads them. A float32 model keeps its
        plain weights (the graph's arrays are views of them); an int8 model's fbgemm copy is its only
        torch copy, so its torch forward cannot run after this."""
        freed = 0
        for module in self.modules():
            if isinstance(module, Linear) and module.packed is not None:
                freed += module.packed.numel() * module.packed.element_size()
                module.packed, module.use_packed = None, False
            elif isinstance(module, Int8Linear) and module.packed is not None:
                freed += module.in_features * module.out_features
                module.packed = None
        self.packed_in_use = False
        return_freed_memory()
        return freed

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy one sequence's cache to another slot (to keep the running sequences contiguous)."""
        for layer in self.model.layers:
            layer.self_attn.kv_cache.move_slot(src, dst, length)

    def read_prefix(self, slot: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of the keys and values at positions 0..length-1 of one slot, per layer."""
        return [(layer.self_attn.kv_cache.k[slot, :, :length].clone(),
                 layer.self_attn.kv_cache.v[slot, :, :length].clone()) for layer in self.model.layers]

    def write_prefix(self, slot: int, kv: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Put the first `length` positions of `read_prefix`'s keys and values into a slot."""
        for layer, (k, v) in zip(self.model.layers, kv, strict=True):
            layer.self_attn.kv_cache.k[slot, :, :length] = k[:, :length]
            layer.self_attn.kv_cache.v[slot, :, :length] = v[:, :length]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, first_slot: int = 0,
                all_logits: bool = False, kv_len: int | None = None,
                row_kv_lens: list[int] | None = None, last: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Logits of each row's last token ([B, vocab]), or of every token with `all_logits`
        ([B, T, vocab]). `input_ids` and `positions` are [B, T]; row i uses cache slot first_slot+i.
        `row_kv_lens` (each row's filled length once this call is done) is used when `rows_independent`,
        by a prefill of several rows (a decode step needs none: see ROW_KEYS_MULTIPLE).
        `last`: the index of each row's last token, for rows padded at the end (prompts of different
        lengths prefilled together)."""
        if self.rows_independent and input_ids.shape[1] == 1:
            rounded = ROW_KEYS_MULTIPLE * math.ceil(keys_to_attend(positions, kv_len) / ROW_KEYS_MULTIPLE)
            kv_len = min(self.cache_len, rounded)
        batch = Batch.make(first_slot, positions, kv_len, self.cfg.sliding_window, self.dtype)
        if self.rows_independent:
            batch.row_kv_lens = row_kv_lens
            b, t = input_ids.shape
            batch.row_tokens = [t] * b if last is None else [int(i) + 1 for i in last]
        batch.cos, batch.sin = self.rope[:, positions][:, :, None]
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, [batch])
        if not all_logits:
            x = x[:, -1] if last is None else x[torch.arange(x.shape[0], device=x.device), last]
        return self.lm_head(self.model.norm(x))

    def forward_mixed(self, decode_ids: torch.Tensor, decode_positions: torch.Tensor, decode_kv_len: int,
                      prompt_ids: torch.Tensor, prompt_positions: torch.Tensor, prompt_kv_len: int,
                      last: list[int]) -> torch.Tensor:
        """A decode step (rows [D, 1], cache slots 0..D-1) and a prompt chunk (rows [P, T], slots
        D..D+P-1, each row's last real token at `last`) in one forward: logits [D + P, vocab], the
        decode rows first. The projections read the weights once for both, where one after the
        other they read them twice; a decode step of a few rows costs about what it costs to read
        them. Not for an int8 model, whose rows must each come out as they do alone."""
        assert not self.rows_independent
        window = self.cfg.sliding_window
        decode = Batch.make(0, decode_positions, decode_kv_len, window, self.dtype)
        prompts = Batch.make(decode_ids.shape[0], prompt_positions, prompt_kv_len, window, self.dtype)
        for batch in (decode, prompts):
            batch.cos, batch.sin = self.rope[:, batch.positions][:, :, None]
        x = self.model.embed_tokens(torch.cat((decode_ids.flatten(), prompt_ids.flatten())))[None]
        for layer in self.model.layers:
            x = layer(x, [decode, prompts])
        d, width = decode_ids.shape[0], prompt_ids.shape[1]
        rows = list(range(d)) + [d + i * width + j for i, j in enumerate(last)]
        return self.lm_head(self.model.norm(x[0, rows]))


# Kept in float32 by an int8 build: none since Int8Linear scales each activation row by its own
# absmax. With fbgemm's one scale per call, the down projection's input (silu(gate) * up, a few huge
# channels) lost too much: perplexity 13.5 all-int8 vs 7.04 with it float. Per-row scaling, measured
# on SmolLM2-135M (scripts/llm_quality.py): 6.70 float32, 6.75 with it float, 6.80 all-int8.
FLOAT_IN_INT8: tuple[str, ...] = ()


def quantize_state_int8(state: dict) -> dict:
    """Every 2-D projection weight (and the output head) becomes `<name>.weight` int8 plus
    `<name>.scale` float32, except FLOAT_IN_INT8. Embeddings and norms stay as they are."""
    out = {}
    for name, t in state.items():
        if FLOAT_IN_INT8 and name.endswith(FLOAT_IN_INT8):
            out[name] = t
        elif name.endswith("_proj.weight") or name == "lm_head.weight":
            q, scale = quantize_int8(t)
            out[name] = q
            out[name[: -len("weight")] + "scale"] = scale
        else:
            out[name] = t
    return out


def _install_int8(model: Llama, state: dict) -> None:
    """Replace the Linear modules whose weights are int8 in `state` by Int8Linear."""
    narrowed = 0
    for name in [k[: -len(".scale")] for k in state if k.endswith(".scale")]:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bias = state.pop(f"{name}.bias", None)
        weight, scale = state.pop(f"{name}.weight"), state.pop(f"{name}.scale")
        low, high = torch.aminmax(weight)
        if max(-int(low), int(high)) > INT8_LEVELS:
            weight, scale = narrowed_int8(weight, scale)
            narrowed += 1
        setattr(parent, child, Int8Linear(weight, scale, bias))
    if narrowed:
        print(f"setup: {narrowed} int8 layers built with 8-bit weights, narrowed to 7 bits at load (see "
              "INT8_LEVELS); `cogkit build-weights llm --dtype int8` again skips this", flush=True)


# Rows a packed weight is laid out for; oneDNN runs any number of rows on it (measured: 4 to 32 rows
# all gain, and a row's result is the same alone or batched).
PACK_ROWS = 16


def cpu_layouts(model: Llama, batched: bool) -> None:
    """Lay each float32 projection weight out for the CPU's GEMMs: column-major, and, for an engine
    that batches, also in oneDNN's blocked layout (`Linear.packed`), used for every call of several
    rows (`Llama.use_packed_weights`). MKL's GEMM on a plain layout re-packs the weight on every call,
    and for a few rows that costs as much as the product itself. Measured on SmolLM2-135M's shapes,
    one thread, tokens/s of all projections: 8 rows 71 -> 106, 16 rows 121 -> 180, while one row runs
    faster column-major (23 vs 19 packed). A lone sequence's prompt is several rows too: prefilled on
    the packed copy, between decode steps as in serving, 4 tokens took 49 ms against 88 ms
    column-major, 14 tokens (a chat prompt after the prefix cache) 85 against 135 ms, 40 tokens 160
    against 191 ms (medians of 8 alternating pairs, stop 31; two tokens: 63 against 68 ms).
    The price is a second copy of the projection weights in memory, so it is skipped (and said) when
    that copy would take more than half the memory available. Both copies are read from the
    memory-mapped checkpoint, so they are made side by side: the packing on a second thread (torch
    releases the GIL)."""
    linears = [(m, m.weight) for m in model.modules()
               if isinstance(m, Linear) and m.weight.dtype == torch.float32]
    size, available = sum(w.numel() * w.element_size() for _, w in linears), available_memory()
    if batched and size > available / 2:
        print(f"setup: batches run on the column-major weights: packing them would take {size / 1e9:.1f} GB "
              f"of {available / 1e9:.1f} GB available", flush=True)
        batched = False

    def pack() -> None:
        for module, weight in linears:
            module.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
            # On the instance from the start: a compiled graph guards on it, and one traced while it
            # was only the class's default recompiled (a minute's stall) after the first batch.
            module.use_packed = False

    packing = batched and linears and torch.backends.mkldnn.is_available()
    packer = threading.Thread(target=pack, name="pack-weights")
    if packing:
        packer.start()
    column_major_weights(model)
    if packing:
        packer.join()


def return_freed_memory() -> None:
    """Hand freed heap memory back to the system where the C library can (glibc's malloc_trim): glibc
    keeps large freed blocks for reuse, and dropping SmolLM2's packed copies then lowered the server's
    resident memory by 0.32 GB instead of 0.63 (2.66 -> 2.03 GB with it)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def available_memory() -> float:
    """Bytes of memory the kernel could hand out now (MemAvailable); infinite where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return float("inf")


def column_major_weights(model: Llama) -> None:
    """Store each float Linear weight that widens its input (out >= in: q/k/v, o, gate/up, the head)
    transposed in memory ([in, out] contiguous; `weight` stays the usual [out, in] view of it). On
    CPU, MKL's GEMM for a few rows (a decode step of 8 sequences) runs about 2x faster on that layout
    than on the checkpoint's (measured on SmolLM2-135M's shapes, one thread: gate_up 8 rows 760 ->
    300 us); results are the same to float rounding. A tied output head gets its own copy (the
    embedding lookup keeps the row layout). A narrowing one (the MLP's down projection, 1536 -> 576)
    keeps the checkpoint's layout: for one row MKL reads it at 13-15 GB/s there against 10-12
    column-major, and a whole one-sequence decode step was faster in 9 of 12 interleaved pairs
    (medians 49.1 vs 51.3 ms; a 120-token prefill 423 vs 444 ms)."""
    for module in model.modules():
        if (isinstance(module, nn.Linear) and module.weight.is_floating_point()
                and module.out_features >= module.in_features):
            module.weight = nn.Parameter(module.weight.t().contiguous().t(), requires_grad=False)


def load_llama(folder: Path, device: str | torch.device = "cpu", batched: bool = False) -> Llama:
    """Build the model on `meta` and assign the tensors of `folder/model.safetensors` as they are.
    An int8 build (`.scale` tensors beside int8 weights) gets Int8Linear layers on CPU; elsewhere its
    weights are dequantised to bfloat16 at load. `batched`: an engine will run several sequences at
    once (on CPU, float32 weights then also get a packed copy: `cpu_layouts`)."""
    from safetensors.torch import load_file

    cfg = LlamaConfig.from_file(Path(folder) / "config.json")
    with torch.device("meta"):
        model = Llama(cfg)
    state = fuse_projections(load_file(Path(folder) / "model.safetensors", device=str(device)))
    if any(k.endswith(".scale") for k in state):
        if torch.device(device).type == "cpu":
            if cfg.tie_word_embeddings and "lm_head.weight" not in state:
                state["lm_head.weight"], state["lm_head.scale"] = quantize_int8(state["model.embed_tokens.weight"])
            _install_int8(model, state)
            model.rows_independent = not any(isinstance(m, nn.Linear) for m in model.modules())
        else:
            for name in [k[: -len(".scale")] for k in state if k.endswith(".scale")]:
                scale = state.pop(f"{name}.scale")
                state[f"{name}.weight"] = (state[f"{name}.weight"].float() * scale[:, None]).bfloat16()
            state = {k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}
    if cfg.tie_word_embeddings and "lm_head.weight" not in state and isinstance(model.lm_head, Linear):
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if torch.device(device).type == "cpu":
        cpu_layouts(model, batched)
    return model.eval().requires_grad_(False)
