"""The prefix cache: a prompt that starts like a recent one copies that start's keys and values instead
of computing them, and generates what it would have generated without the copy."""

import queue

import pytest
import torch

from cogkit.build import build_weights
from models.llm.engine import BatchEngine
from models.llm.prefix_cache import PrefixCache, shared_start
from models.llm.text_generation import GenerationStats, Request, Sampling, TextGenerator
from tests.tiny_models import make_tiny_llama_source


def kv(length: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((2, length, 4), float(i)), torch.full((2, length, 4), -float(i))) for i in range(layers)]


def test_longest_shared_start_leaves_the_last_token_to_compute():
    cache = PrefixCache()
    cache.store([1, 2, 3, 4, 5], kv(5))
    cache.store([1, 2, 9], kv(3))
    assert cache.longest([1, 2, 3, 4, 7, 8])[0] == 4
    assert cache.longest([1, 2, 9, 9])[0] == 3
    # the whole prompt is stored, but its last token must run to give the first new token's logits
    assert cache.longest([1, 2, 3, 4, 5])[0] == 4
    assert cache.longest([7, 1, 2]) == (0, None)
    assert cache.hits == 3 and cache.reused_tokens == 11
    assert cache.covers([1, 2, 3]) and not cache.covers([1, 2, 3, 4, 5, 6])
    assert shared_start((1, 2, 3), [1, 2, 4]) == 2


def test_least_recently_used_entries_leave_first_within_the_budget():
    one = sum(k.numel() * 4 + v.numel() * 4 for k, v in kv(10))
    cache = PrefixCache(budget_bytes=2 * one)
    cache.store(list(range(10)), kv(10))
    cache.store(list(range(100, 110)), kv(10))
    cache.longest(list(range(12)))  # touches the first entry: the second is now the oldest
    cache.store(list(range(200, 210)), kv(10))
    assert cache.longest(list(range(12)))[0] == 10
    assert cache.longest(list(range(100, 112)))[0] == 0
    assert cache.used == 2 * one
    cache.store(list(range(1000)), kv(1000))  # larger than the whole budget: not kept
    assert cache.used == 2 * one


def run_together(engine: BatchEngine, prompts: list[list[int]], max_new: int) -> list[GenerationStats]:
    """Submit all prompts while the engine waits, so that it admits (and prefills) them together."""
    done, stats = queue.SimpleQueue(), [GenerationStats() for _ in prompts]
    with engine.wake:  # the engine thread cannot admit anything before this block ends
        for ids, st in zip(prompts, stats, strict=True):
            engine.submit(Request(ids, Sampling(max_new_tokens=max_new, temperature=0), [],
                                  lambda event: event[0] == "text" or done.put(event), st))
    for _ in prompts:
        assert done.get(timeout=60)[0] == "done"
    return stats


@pytest.fixture(scope="module")
def short_source(tmp_path_factory):
    """The tiny model with a 64-token context: its cache is 64 positions long, so padding a prompt
    that starts late runs past the cache's end."""
    return make_tiny_llama_source(tmp_path_factory.mktemp("short-source"), context=64)


@pytest.fixture(scope="module")
def short_context(short_source, tmp_path_factory):
    dest = tmp_path_factory.mktemp("short-weights") / "llm"
    build_weights("llm", source=str(short_source), dtype="float32", dest=dest, log=lambda *a: None)
    return dest


def test_reused_start_gives_the_tokens_computed_from_scratch(short_context):
    first = [5 + (i * 7) % 300 for i in range(40)]
    later = first[:35] + [11, 12, 13, 14, 15]  # shares 35 tokens with `first`
    fresh = [400 - i for i in range(40)]  # shares nothing; prefilled in the same forward as `later`

    scratch = TextGenerator(short_context, max_batch=1)
    scratch.engine.prefixes = None
    expected = [run_together(scratch.engine, [p], max_new=16)[0].token_ids for p in (later, fresh)]

    gen = TextGenerator(short_context, max_batch=4)
    run_together(gen.engine, [first], max_new=4)
    stats = run_together(gen.engine, [later, fresh], max_new=16)
    assert gen.engine.prefill_sizes[-1] == 2  # one padded forward, rows starting at 35 and 0
    assert [s.cached_tokens for s in stats] == [35, 0]
    assert [s.token_ids for s in stats] == expected


def test_chat_prompts_share_their_system_prompt_and_keep_their_text(tiny_weights_root):
    gen = TextGenerator(tiny_weights_root / "llm", max_batch=1)
    scratch = TextGenerator(tiny_weights_root / "llm", max_batch=1)
    scratch.engine.prefixes = None
    prompts = [gen.encode(gen.format_prompt(p, "You are terse.")) for p in ("Hello there", "Numbers please")]
    for ids in prompts:
        out = []
        for g in (gen, scratch):
            st = GenerationStats()
            out.append(("".join(g.generate(ids, Sampling(max_new_tokens=24, temperature=0), [], st)), st))
        (text, st), (scratch_text, _) = out
        assert text == scratch_text
    assert st.cached_tokens == shared_start(tuple(prompts[0]), prompts[1]) > 5


def test_int8_models_compute_every_prompt_whole(short_source, tmp_path):
    # their rows must come out bit for bit as they do alone, and a prompt prefilled in two pieces
    # rounds differently from one piece
    dest = tmp_path / "llm"
    build_weights("llm", source=str(short_source), dtype="int8", dest=dest, log=lambda *a: None)
    gen = TextGenerator(dest, max_batch=4)
    assert gen.model.rows_independent and gen.engine.prefixes is None


def test_the_next_turn_reuses_the_last_one_with_its_answer(short_context):
    # a client that continues the conversation token for token: the last prompt, the answer, more
    first = [5 + (i * 7) % 300 for i in range(20)]
    gen = TextGenerator(short_context, max_batch=2)
    (answered,) = run_together(gen.engine, [first], max_new=10)
    answer = answered.token_ids
    turn = first + answer + [21, 22, 23]
    scratch = TextGenerator(short_context, max_batch=1)
    scratch.engine.prefixes = None
    (stats,) = run_together(gen.engine, [turn], max_new=8)
    # a request that stopped at its length never fed its last token back: the cache lacks that one
    fed = len(answer) - (answered.stop_reason == "length")
    assert stats.cached_tokens == len(first) + fed > len(first)
    assert stats.token_ids == run_together(scratch.engine, [turn], max_new=8)[0].token_ids
    # entries that are a start of a longer one (each prompt, the first turn) gave way to it
    keys = list(gen.engine.prefixes.entries)
    assert len(keys) == 1 and keys[0][: len(turn)] == tuple(turn)


def test_a_long_prompt_mostly_cached_is_prefilled_with_the_others(tiny_weights_root):
    # 150 tokens do not fit one 128-token chunk, but the 6 the cache leaves do
    folder = tiny_weights_root / "llm"
    first = [5 + (i * 7) % 300 for i in range(150)]
    longer, fresh = first + [11, 12, 13, 14, 15], [400 - i for i in range(30)]
    scratch = TextGenerator(folder, max_batch=1)
    scratch.engine.prefixes = None
    expected = [run_together(scratch.engine, [p], max_new=12)[0].token_ids for p in (longer, fresh)]
    gen = TextGenerator(folder, max_batch=4)
    run_together(gen.engine, [first], max_new=2)
    stats = run_together(gen.engine, [longer, fresh], max_new=12)
    assert gen.engine.prefill_sizes[-1] == 2
    assert [s.cached_tokens for s in stats] == [150, 0]
    assert [s.token_ids for s in stats] == expected
