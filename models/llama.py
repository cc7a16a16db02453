"""A small Llama decoder in plain PyTorch, in the spirit of gpt-fast.

Parameter names match Hugging Face's `LlamaForCausalLM`, so a converted checkpoint loads here and
in transformers alike. The same decoder runs Mistral, Qwen2/2.5 and Qwen3: what differs between the
families (biases, q/k norms, sliding windows, rope scaling) is read from config.json by
`models/llm_families.py`. The module is built on the `meta` device and its tensors are assigned from
the memory-mapped safetensors file: no random initialisation, no extra copy.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.llm_families import inv_frequencies


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
        from models.llm_families import config_fields

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


class Linear(nn.Linear):
    def reset_parameters(self):
        # Weights always come from the checkpoint. Initialising on `meta` would also import torch's
        # decomposition tables (sympy and friends): about a second of boot time for nothing.
        pass


class Embedding(nn.Embedding):
    def reset_parameters(self):
        pass


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the storage dtype, as the reference implementation does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, cfg: LlamaConfig, dtype: torch.dtype):
    seq_len = positions.max() + 1 if cfg.rope["rope_type"] == "dynamic" else None
    inv_freq, scale = inv_frequencies(cfg.rope, cfg.head_dim, cfg.max_position_embeddings, seq_len,
                                      positions.device)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVCache(nn.Module):
    def __init__(self, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (1, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k[:, :, positions] = k
        self.v[:, :, positions] = v
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, cfg.num_attention_heads * hd, bias=cfg.attention_bias)
        self.k_proj = Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=cfg.attention_bias)
        self.v_proj = Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=cfg.attention_bias)
        self.o_proj = Linear(cfg.num_attention_heads * hd, cfg.hidden_size, bias=cfg.o_proj_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, positions, mask):
        b, t, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(b, t, -1, hd)
        k = self.k_proj(x).view(b, t, -1, hd)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = self.kv_cache.update(positions, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, positions, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.cache_len = 0

    def setup_cache(self, max_len: int) -> None:
        """Allocate the KV cache for sequences up to `max_len` tokens (reused when big enough)."""
        if max_len <= self.cache_len:
            return
        # Round up so that nearby request sizes share one allocation.
        max_len = min(self.cfg.max_position_embeddings, 256 * math.ceil(max_len / 256))
        w = self.lm_head.weight
        for layer in self.model.layers:
            layer.self_attn.kv_cache = KVCache(self.cfg.num_key_value_heads, max_len, self.cfg.head_dim,
                                               w.dtype, w.device)
        self.cache_len = max_len

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits for every position of `input_ids` ([1, T]) placed at `positions` ([T])."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(positions, self.cfg, x.dtype)
        key_positions = torch.arange(self.cache_len, device=positions.device)
        mask = key_positions[None, :] <= positions[:, None]
        # Sliding-window layers (Mistral, some Qwen) see only the last `sliding_window` keys.
        window_mask = (mask & (key_positions[None, :] > positions[:, None] - self.cfg.sliding_window)
                       if self.cfg.sliding_window else mask)
        for layer, sliding in zip(self.model.layers, self.cfg.sliding_layers):
            x = layer(x, cos, sin, positions, window_mask if sliding else mask)
        return self.lm_head(self.model.norm(x))


def load_llama(folder: Path, device: str | torch.device = "cpu") -> Llama:
    """Build the model on `meta` and assign the tensors of `folder/model.safetensors` as they are."""
    from safetensors.torch import load_file

    cfg = LlamaConfig.from_file(Path(folder) / "config.json")
    with torch.device("meta"):
        model = Llama(cfg)
    state = load_file(Path(folder) / "model.safetensors", device=str(device))
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
