"""A small Llama decoder in plain PyTorch, in the spirit of gpt-fast.

Parameter names match Hugging Face's `LlamaForCausalLM`, so a converted checkpoint loads here and
in transformers alike. The module is built on the `meta` device and its tensors are assigned from
the memory-mapped safetensors file: no random initialisation, no extra copy.
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


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
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_file(cls, path: Path) -> "LlamaConfig":
        raw = json.loads(Path(path).read_text())
        eos = raw.get("eos_token_id")
        raw["eos_token_id"] = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_hf_dict(self) -> dict:
        """The config.json that transformers reads as a `LlamaConfig`, too."""
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                "attention_bias": False, "mlp_bias": False, **asdict(self)}


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


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


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
        self.q_proj = Linear(cfg.hidden_size, cfg.num_attention_heads * hd, bias=False)
        self.k_proj = Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=False)
        self.v_proj = Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=False)
        self.o_proj = Linear(cfg.num_attention_heads * hd, cfg.hidden_size, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, positions, mask):
        b, t, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(b, t, -1, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = self.kv_cache.update(positions, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

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
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        key_positions = torch.arange(self.cache_len, device=positions.device)
        mask = key_positions[None, :] <= positions[:, None]
        for layer in self.model.layers:
            x = layer(x, cos, sin, positions, mask)
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
