"""The LLM's model code in-process: agreement with transformers, sampling, streaming text, stops."""

import pytest
import torch

from models.llm.llama import load_llama
from models.llm.build import unpermute_rope
from models.llm.text_generation import (GenerationStats, PromptTooLongError, Sampling, TextGenerator,
                                    TextStream, stop_prefix_len)


@pytest.fixture(scope="module")
def generator(tiny_weights_root):
    return TextGenerator(tiny_weights_root / "llm")


def test_logits_match_transformers(tiny_llm_source, tiny_weights_root):
    from transformers import LlamaForCausalLM

    reference = LlamaForCausalLM.from_pretrained(tiny_llm_source).eval()
    ours = load_llama(tiny_weights_root / "llm")
    ours.setup_cache(64)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 9, 10]])
    with torch.no_grad():
        want = reference(ids).logits
        got = ours(ids, torch.arange(ids.shape[1])[None], all_logits=True)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_cpu_linear_weights_are_laid_out_for_one_row(tiny_weights_root):
    # Widening projections column-major, narrowing ones (the down projection) as stored: MKL's
    # one-row GEMM reads each faster that way.
    model = load_llama(tiny_weights_root / "llm")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    widening = [m for m in linears if m.out_features >= m.in_features]
    narrowing = [m for m in linears if m.out_features < m.in_features]
    assert widening and narrowing  # the tiny model has both kinds
    assert all(m.weight.t().is_contiguous() for m in widening)
    assert all(m.weight.is_contiguous() for m in narrowing)
    assert model.model.embed_tokens.weight.is_contiguous()  # the row lookup keeps its layout
    if model.cfg.tie_word_embeddings:
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_batching_switches_the_projections_to_their_packed_copies(tiny_weights_root):
    assert all(m.packed is None for m in load_llama(tiny_weights_root / "llm").modules()
               if isinstance(m, torch.nn.Linear))  # one sequence at a time: no second copy
    model = load_llama(tiny_weights_root / "llm", batched=True)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.packed is not None for m in linears)  # the fast path for batches is really there
    layer = model.model.layers[0].mlp.gate_up_proj
    step = torch.randn(5, 1, layer.in_features)  # 5 sequences x 1 token
    plain = torch.nn.functional.linear(step, layer.weight, layer.bias)
    model.use_packed_weights(True)
    torch.testing.assert_close(layer(step), plain, atol=1e-5, rtol=1e-5)
    # Which copy a call reads: a packed copy of zeros shows up only while batching.
    layer.packed = torch.ops.mkldnn._reorder_linear_weight(torch.zeros_like(layer.weight), 16)
    assert not layer(step).any()
    model.use_packed_weights(False)
    assert torch.equal(layer(step), plain)


def test_no_packed_copy_where_memory_is_short(tiny_weights_root, monkeypatch, capsys):
    import models.llm.llama as llama

    monkeypatch.setattr(llama, "available_memory", lambda: 1000.0)  # this machine has plenty
    model = load_llama(tiny_weights_root / "llm", batched=True)
    assert all(m.packed is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert "batches run on the column-major weights: packing them would take" in capsys.readouterr().out
    model.use_packed_weights(True)  # and batching still runs, on the column-major copy
    model.setup_cache(16, slots=2)
    assert model(torch.tensor([[1], [2]]), torch.tensor([[0], [0]])).shape[0] == 2


def test_prompts_of_different_lengths_prefilled_together_match_alone(tiny_weights_root):
    model = load_llama(tiny_weights_root / "llm")
    model.setup_cache(32, slots=2)
    short, long = [11, 12, 13], [21, 22, 23, 24, 25, 26]
    padded = torch.tensor([short + short[-1:] * 3, long])  # padded at the end with the last token
    with torch.no_grad():
        together = model(padded, torch.arange(6).expand(2, 6), last=[2, 5])
        # The next token of each, decoded after the padded prefill: the padding is never seen.
        step = model(torch.tensor([[7], [8]]), torch.tensor([[3], [6]]), kv_len=7)
        alone = [model(torch.tensor([ids]), torch.arange(len(ids))[None], first_slot=0)[0] for ids in (short, long)]
        alone_step = model(torch.tensor([[8]]), torch.tensor([[6]]))[0]  # slot 0 now holds `long`
        model(torch.tensor([short]), torch.arange(3)[None])
        short_step = model(torch.tensor([[7]]), torch.tensor([[3]]))[0]
    torch.testing.assert_close(together, torch.stack(alone), atol=1e-5, rtol=1e-5)
    # Two rows and one go through different GEMM paths (the down projection keeps its row layout),
    # which round apart by ~1e-5 on logits of ~9; a step that saw the padding moves them by ~10.
    torch.testing.assert_close(step, torch.stack([short_step, alone_step]), atol=1e-4, rtol=1e-5)


def test_a_decode_step_and_a_prompt_in_one_forward_match_them_one_after_the_other(tiny_weights_root):
    """forward_mixed: two decoding rows (slots 0-1, different lengths) and two prompts padded to one
    width (slots 2-3) in one forward give the logits, and leave the cache, as a prefill then a decode
    step do; a key or query crossing between the two parts would move them by far more."""
    model = load_llama(tiny_weights_root / "llm", batched=True)
    model.use_packed_weights(True)
    model.setup_cache(32, slots=4)
    histories = [[31, 32, 33, 34, 35], [41, 42]]
    prompts, widths = torch.tensor([[11, 12, 13, 13], [21, 22, 23, 24]]), [2, 3]
    decode_ids, decode_positions = torch.tensor([[36], [43]]), torch.tensor([[5], [2]])

    def fill():
        for slot, ids in enumerate(histories):
            model(torch.tensor([ids]), torch.arange(len(ids))[None], first_slot=slot)

    with torch.no_grad():
        fill()
        prefill = model(prompts, torch.arange(4).expand(2, 4), first_slot=2, last=widths)
        step = model(decode_ids, decode_positions, kv_len=6)
        apart = torch.cat((step, prefill))
        cache = [(a.kv_cache.k[:4].clone(), a.kv_cache.v[:4].clone()) for a in
                 (layer.self_attn for layer in model.model.layers)]
        for layer in model.model.layers:  # start again from a cache without the new tokens
            layer.self_attn.kv_cache.k.zero_(), layer.self_attn.kv_cache.v.zero_()
        fill()
        mixed = model.forward_mixed(decode_ids, decode_positions, 6, prompts, torch.arange(4).expand(2, 4), 4,
                                    last=widths)
    torch.testing.assert_close(mixed, apart, atol=1e-5, rtol=1e-5)
    for layer, (k, v) in zip(model.model.layers, cache, strict=True):
        torch.testing.assert_close(layer.self_attn.kv_cache.k[:4], k, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer.self_attn.kv_cache.v[:4], v, atol=1e-6, rtol=1e-5)


def test_incremental_decoding_matches_full_forward(tiny_weights_root):
    model = load_llama(tiny_weights_root / "llm")
    model.setup_cache(32)
    ids = torch.tensor([[11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        full = model(ids, torch.arange(6)[None])[0]
        model(ids[:, :4], torch.arange(4)[None])
        model(ids[:, 4:5], torch.tensor([[4]]))
        step = model(ids[:, 5:6], torch.tensor([[5]]))[0]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_greedy_tokens_match_transformers_generate(tiny_llm_source, generator):
    from transformers import LlamaForCausalLM

    reference = LlamaForCausalLM.from_pretrained(tiny_llm_source).eval()
    prompt = generator.encode(generator.format_prompt("Hello there", None))
    stats = GenerationStats()
    list(generator.generate(prompt, Sampling(max_new_tokens=12, temperature=0), [], stats))
    out = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                             eos_token_id=list(generator.eos_ids), pad_token_id=0)
    assert stats.token_ids == out[0, len(prompt):].tolist()[:len(stats.token_ids)]
    assert stats.output_tokens > 0


def test_same_seed_same_text_other_seed_other_text(generator):
    prompt = generator.encode(generator.format_prompt("Tell me a story", None))

    def sample(seed):
        return "".join(generator.generate(prompt, Sampling(max_new_tokens=30, temperature=1.0, seed=seed),
                                          [], GenerationStats()))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_top_k_one_is_greedy(generator):
    prompt = generator.encode(generator.format_prompt("Numbers", None))
    greedy, top1 = GenerationStats(), GenerationStats()
    list(generator.generate(prompt, Sampling(max_new_tokens=15, temperature=0), [], greedy))
    list(generator.generate(prompt, Sampling(max_new_tokens=15, temperature=2.0, top_k=1, seed=3), [], top1))
    assert top1.token_ids == greedy.token_ids


def test_chat_template_places_system_and_user(generator):
    text = generator.format_prompt("What is Cog?", "Answer briefly.")
    assert text == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is Cog?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    assert "You are a tiny test model." in generator.format_prompt("What is Cog?", None)


def test_prompt_longer_than_context_is_a_clear_error(generator):
    ids = list(range(10, 20)) * 300  # 3000 tokens, context is 2048
    with pytest.raises(PromptTooLongError, match=r"prompt: 3000 tokens .* context of 2048"):
        next(generator.generate(ids, Sampling(), [], GenerationStats()))


def test_max_new_tokens_is_capped_by_the_context(generator):
    ids = list(range(10, 20)) * 204  # 2040 of 2048
    stats = GenerationStats()
    list(generator.generate(ids, Sampling(max_new_tokens=500, temperature=0), [], stats))
    assert stats.input_tokens + stats.output_tokens <= 2048


def test_stop_prefix_len():
    assert stop_prefix_len("hello wor", ["world"]) == 3
    assert stop_prefix_len("hello", ["xyz"]) == 0
    assert stop_prefix_len("ab", ["abc", "b"]) == 2


def test_text_stream_holds_back_a_possible_stop_and_cuts_at_it(generator):
    tok = generator.tokenizer
    ids = tok.encode("The quick brown fox jumps over the lazy dog.", add_special_tokens=False).ids
    stream = TextStream(tok, ["lazy"])
    pieces = [stream.push(i) for i in ids]
    text = "".join(pieces) + stream.flush()
    assert text == "The quick brown fox jumps over the "
    assert stream.stopped


def test_unpermute_rope_inverts_llama_cpp_layout():
    n_heads, head_dim, cols = 3, 8, 5
    w = torch.arange(n_heads * head_dim * cols, dtype=torch.float32).reshape(n_heads * head_dim, cols)
    # llama.cpp's convert script: interleave the two rotary halves of every head.
    permuted = w.reshape(n_heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(w.shape)
    assert torch.equal(torch.from_numpy(unpermute_rope(permuted.numpy(), n_heads)), w)
