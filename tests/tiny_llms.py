"""Tiny random-weight checkpoints of every LLM family cogkit runs, laid out like the hub's.

Each is made offline from a transformers config (so transformers is the reference implementation),
written with `save_pretrained` plus a tokenizer and a chat template, and optionally copied into a
Hugging Face cache folder so that `--source hf:ORG/NAME` finds it with HF_HUB_OFFLINE=1.

As a script, it makes a stand-in for your own checkpoint (the README walkthrough uses it):

    python -m tests.tiny_llms qwen2 ./my-model
"""

import json
import shutil
import sys
from pathlib import Path

from tests.tiny_models import make_tokenizer

# A small Qwen2.5-like template: a default system turn, tools listed in the system turn as JSON.
TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a tiny test model.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Like older Mistral templates: no system role at all.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)

# family name -> (transformers model_type, config overrides, chat template)
FAMILIES = {
    "llama": ("llama", dict(tie_word_embeddings=False, rms_norm_eps=1e-5, attention_bias=True, mlp_bias=True),
              None),
    # Llama 3.1/3.2-style: rope_scaling llama3 (written in the hub's older config form below),
    # tied embeddings, a head_dim that is not hidden_size / heads.
    "llama3": ("llama", dict(tie_word_embeddings=True, head_dim=32, max_position_embeddings=1024,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                             rope_theta=500000.0), None),
    "llama-linear": ("llama", dict(rope_scaling={"type": "linear", "factor": 4.0}), None),
    "llama-dynamic": ("llama", dict(max_position_embeddings=16, rope_scaling={"type": "dynamic", "factor": 2.0}),
                      None),
    "llama-yarn": ("llama", dict(max_position_embeddings=512, rope_theta=10000.0,
                                 rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                               "original_max_position_embeddings": 128}), None),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1000000.0), TOOLS_TEMPLATE),
    "qwen2-sliding": ("qwen2", dict(use_sliding_window=True, sliding_window=6, max_window_layers=1), None),
    "qwen3": ("qwen3", dict(tie_word_embeddings=True, head_dim=32, rope_theta=1000000.0), TOOLS_TEMPLATE),
    "mistral": ("mistral", dict(sliding_window=6, rope_theta=1000000.0), NO_SYSTEM_TEMPLATE),
}


def make_tiny_checkpoint(family: str, folder: Path, seed: int = 0) -> Path:
    """A random-weight checkpoint of `family` in `folder`: config.json, model.safetensors, tokenizer
    files with a chat template, generation_config.json."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, overrides, template = FAMILIES[family]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder)
    overrides = dict(overrides)
    legacy_rope = {k: overrides.pop(k) for k in ("rope_scaling", "rope_theta") if k in overrides}
    config = AutoConfig.for_model(
        model_type, vocab_size=tok.get_vocab_size(), bos_token_id=tok.token_to_id("<|im_start|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"), **{**COMMON, **overrides})
    if legacy_rope:
        params = dict(legacy_rope.get("rope_scaling") or {"rope_type": "default"})
        params["rope_type"] = params.pop("type", None) or params["rope_type"]
        config.rope_parameters = {**params, "rope_theta": legacy_rope.get("rope_theta", 10000.0)}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger than the default init, so that greedy choices are far apart
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
            elif name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    if legacy_rope:
        # Write config.json the way Llama 3.1's hub repository has it: rope_theta + rope_scaling.
        raw = json.loads((folder / "config.json").read_text())
        raw.pop("rope_parameters", None)
        raw["rope_theta"] = legacy_rope.get("rope_theta", 10000.0)
        if "rope_scaling" in legacy_rope:
            raw["rope_scaling"] = legacy_rope["rope_scaling"]
        (folder / "config.json").write_text(json.dumps(raw, indent=2))
    if template is not None:
        tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
        tok_cfg["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return folder


def make_hub_cache(checkpoint: Path, cache: Path, repo: str, revision: str = "0" * 40) -> Path:
    """Copy `checkpoint` into a Hugging Face cache (`models--ORG--NAME/snapshots/REV`, refs/main), as
    `huggingface_hub.snapshot_download` leaves it; returns the cache folder."""
    repo_dir = Path(cache) / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    shutil.copytree(checkpoint, snapshot, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return Path(cache)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in FAMILIES:
        sys.exit(f"usage: python -m tests.tiny_llms FAMILY FOLDER  (FAMILY: {', '.join(FAMILIES)})")
    print(make_tiny_checkpoint(sys.argv[1], Path(sys.argv[2])))
