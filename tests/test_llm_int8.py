"""`cogkit build-weights llm --dtype int8`: int8 rows plus scales, recorded in the manifest, loaded
as int8 GEMM layers without conversion work, close to the float32 model."""

import json

import pytest
import torch

from cogkit.build import build_weights
from models.llm.llama import Int8Linear, Linear, load_llama
from models.llm.text_generation import GenerationStats, Sampling, TextGenerator


@pytest.fixture(scope="module")
def int8_folder(tiny_llm_source, tmp_path_factory):
    dest = tmp_path_factory.mktemp("int8") / "llm"
    manifest = build_weights("llm", source=str(tiny_llm_source), dtype="int8", dest=dest, log=lambda *a: None)
    assert manifest["dtype"] == "int8"
    return dest


def test_int8_build_stores_int8_rows_and_scales(int8_folder):
    from safetensors import safe_open

    with safe_open(str(int8_folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.layers.0.self_attn.qkv_proj.weight").dtype == torch.int8
        assert f.get_tensor("model.layers.0.self_attn.qkv_proj.scale").dtype == torch.float32
        assert f.get_tensor("lm_head.weight").dtype == torch.int8  # the tied head gets its own int8 copy
        assert f.get_tensor("model.layers.0.mlp.down_proj.weight").dtype == torch.float32  # FLOAT_IN_INT8
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "model.layers.0.mlp.down_proj.scale" not in names
    assert json.loads((int8_folder / "config.json").read_text())["torch_dtype"] == "int8"


def test_int8_model_loads_int8_layers_and_stays_close_to_float32(int8_folder, tiny_weights_root):
    q, f = load_llama(int8_folder), load_llama(tiny_weights_root / "llm")
    assert isinstance(q.model.layers[0].self_attn.qkv_proj, Int8Linear)
    assert isinstance(q.lm_head, Int8Linear)
    assert isinstance(q.model.layers[0].mlp.down_proj, Linear)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8]])
    q.setup_cache(16), f.setup_cache(16)
    with torch.inference_mode():
        lq = q(ids, torch.arange(8)[None], all_logits=True)
        lf = f(ids, torch.arange(8)[None], all_logits=True)
    cos = torch.nn.functional.cosine_similarity(lq.flatten(), lf.flatten(), dim=0)
    assert cos > 0.98, cos
    assert (lq.argmax(-1) == lf.argmax(-1)).float().mean() >= 0.75


def test_int8_generates_through_the_batching_engine(int8_folder):
    gen = TextGenerator(int8_folder, max_batch=4)
    stats = GenerationStats()
    text = "".join(gen.generate(gen.encode(gen.format_prompt("Hello", None)),
                                Sampling(max_new_tokens=8, temperature=0), [], stats))
    assert stats.output_tokens >= 1 and isinstance(text, str)
