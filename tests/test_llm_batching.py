"""Continuous batching: requests run together and each gets what it would get alone.

In-process against the engine, then through the real coglet server at concurrency 16."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from cogkit.server import CogServer
from models.llm.text_generation import GenerationStats, Sampling, TextGenerator

PROMPTS = ["Hello there", "Tell me about Paris", "Numbers", "The quick brown fox", "Cog packages models",
           "How are you today?", "A", "Punctuation , . ; : ! ?"]


@pytest.fixture(scope="module")
def endless(endless_weights_root):
    return endless_weights_root / "llm"


def generate_alone(folder, prompts, samplings):
    return generate_one_by_one(TextGenerator(folder, max_batch=1), prompts, samplings)


def generate_one_by_one(gen, prompts, samplings):
    out = []
    for prompt, sampling in zip(prompts, samplings, strict=True):
        stats = GenerationStats()
        text = "".join(gen.generate(gen.encode(gen.format_prompt(prompt, None)), sampling, [], stats))
        out.append((text, stats.token_ids))
    return out


def generate_together(gen, prompts, samplings, stops=None):
    """All requests at once, from one thread each, on a generator that batches up to 8."""
    stops = stops or [[] for _ in prompts]
    results = [None] * len(prompts)

    def one(i):
        stats = GenerationStats()
        ids = gen.encode(gen.format_prompt(prompts[i], None))
        results[i] = ("".join(gen.generate(ids, samplings[i], stops[i], stats)), stats.token_ids, stats)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_greedy_and_seeded_text_is_the_same_batched_as_alone(endless):
    # Different lengths, so that requests leave the batch at different steps and slots get compacted.
    samplings = [Sampling(max_new_tokens=12 + 5 * i, temperature=0 if i % 2 == 0 else 0.9, top_k=40,
                          top_p=0.95, seed=i) for i in range(len(PROMPTS))]
    alone = generate_alone(endless, PROMPTS, samplings)
    gen = TextGenerator(endless, max_batch=8)
    switches = []  # the engine tells the model when it runs several sequences (packed weights on CPU)
    use_packed_weights = gen.model.use_packed_weights
    gen.model.use_packed_weights = lambda on: (switches.append(on), use_packed_weights(on))
    together = generate_together(gen, PROMPTS, samplings)
    assert max(gen.engine.batch_sizes) >= 4  # they really ran in one batch
    assert max(gen.engine.prefill_sizes) >= 2  # and prompts that waited together were prefilled together
    assert switches and switches[0] is True
    for (text, ids), (btext, bids, stats) in zip(alone, together, strict=True):
        assert bids == ids
        assert btext == text
        assert stats.stop_reason == "length"


def test_a_lone_sequence_prefills_on_the_packed_weights_and_decodes_on_the_column_major_ones(endless):
    """On CPU every forward of several rows reads the packed copies (faster from 2 tokens up, see
    `cpu_layouts`), a prompt alone included; a lone sequence's decode steps read the column-major
    copy. Each forward's rows and the layout it read, for one request alone on an engine that
    batches, then two at once; the text is the same as on a model that never batches."""
    gen = TextGenerator(endless, max_batch=4)
    calls = []  # (rows, tokens per row, packed copies in use) of each forward
    forward = gen.model.forward
    gen.model.forward = lambda ids, *a, **k: (calls.append((*ids.shape, gen.model.packed_in_use)),
                                              forward(ids, *a, **k))[1]
    # A prompt that arrives while the other decodes shares its step (forward_mixed): rows of both.
    mixed = gen.model.forward_mixed
    gen.model.forward_mixed = lambda d, *a, **k: (  # a[2]: the prompt's ids
        calls.append((d.shape[0] + a[2].shape[0], a[2].shape[1], gen.model.packed_in_use)), mixed(d, *a, **k))[1]
    samplings = [Sampling(max_new_tokens=6, temperature=0)] * 2
    alone = generate_alone(endless, PROMPTS[1:3], samplings)
    assert generate_one_by_one(gen, PROMPTS[1:2], samplings[:1]) == alone[:1]
    prompt_len = len(gen.encode(gen.format_prompt(PROMPTS[1], None)))
    assert calls[0] == (1, prompt_len, True) and prompt_len > 1
    assert calls[1:] == [(1, 1, False)] * 5
    calls.clear()
    together = generate_together(gen, PROMPTS[1:3], samplings)
    assert [(text, ids) for text, ids, _ in together] == alone
    assert all(packed for rows, tokens, packed in calls if rows * tokens > 1)
    assert any(rows == 2 for rows, _, _ in calls)


def test_a_compiled_model_serves_batches(endless):
    """COGKIT_COMPILE on CPU: one sequence runs the compiled forward, batches the packed weights eagerly
    (Inductor cannot lower oneDNN's packed linear: every batch used to fail)."""
    samplings = [Sampling(max_new_tokens=16, temperature=0) for _ in PROMPTS[:4]]
    alone = generate_alone(endless, PROMPTS[:4], samplings)
    gen = TextGenerator(endless, max_batch=4)
    gen.compile_decode()
    compiled_alone = generate_one_by_one(gen, PROMPTS[:1], samplings[:1])  # compiles, one sequence
    together = generate_together(gen, PROMPTS[:4], samplings)
    assert max(gen.engine.batch_sizes) >= 2
    assert compiled_alone == alone[:1]
    assert [(text, ids) for text, ids, _ in together] == alone


def test_a_compiled_model_compiles_at_warm_up_not_at_requests(endless):
    """What setup's warm-up compiles is all a compiled CPU model needs: a prompt of any length, a batch,
    then one sequence again compile nothing more (each used to: the warm-up's one-token prompt left
    the prefill graph uncompiled, and a batch left the one-sequence graph's guards failing)."""
    from torch._dynamo.utils import counters

    gen = TextGenerator(endless, max_batch=4)
    gen.compile_decode()
    gen.warmup()
    graphs = counters["stats"]["unique_graphs"]
    samplings = [Sampling(max_new_tokens=8, temperature=0) for _ in PROMPTS[:3]]
    generate_one_by_one(gen, PROMPTS[:1], samplings[:1])
    generate_together(gen, PROMPTS[:3], samplings)
    generate_one_by_one(gen, PROMPTS[1:2], samplings[:1])
    assert max(gen.engine.batch_sizes) >= 2
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_compiled_model_without_packed_copies_compiles_its_batches_at_warm_up(endless):
    """As on a GPU (no packed copies, so batches run the compiled forward too): after setup's warm-up,
    a batch of requests compiles nothing (its first used to: 2 more graphs, at a request) and gives
    each the text it gets alone."""
    from torch._dynamo.utils import counters

    samplings = [Sampling(max_new_tokens=16, temperature=0) for _ in PROMPTS[:4]]
    alone = generate_alone(endless, PROMPTS[:4], samplings)
    gen = TextGenerator(endless, max_batch=4)
    gen.model.drop_packed_weights()
    gen.engine.packed = None
    gen.compile_decode()
    gen.warmup()
    graphs = counters["stats"]["unique_graphs"]
    together = generate_together(gen, PROMPTS[:4], samplings)
    assert max(gen.engine.batch_sizes) >= 2 and max(gen.engine.prefill_sizes) >= 2
    assert [(text, ids) for text, ids, _ in together] == alone
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_compiled_forward_first_traced_on_two_tokens_serves_every_length(endless):
    """SmolLM2's warm-up prompt is two tokens; the compiled prefill traced on it must not be
    specialised to two (it was while the rope table was a plain attribute: its first dim, 2, shared a
    symbol with the prompt length, and the first real request compiled again for 55-62 s)."""
    import torch
    from torch._dynamo.utils import counters

    from models.llm.llama import load_llama

    model = load_llama(endless)
    model.setup_cache(32)
    forward = torch.compile(model.forward, dynamic=True)
    with torch.inference_mode():
        forward(torch.tensor([[5, 17]]), torch.arange(2)[None], kv_len=2)
        graphs = counters["stats"]["unique_graphs"]
        for length in (5, 9):
            forward(torch.arange(3, 3 + length)[None], torch.arange(length)[None], kv_len=length)
    assert counters["stats"]["unique_graphs"] == graphs


def test_requests_joining_a_running_batch_get_their_own_result(endless):
    samplings = [Sampling(max_new_tokens=150, temperature=0) for _ in PROMPTS[:4]]
    alone = generate_alone(endless, PROMPTS[:4], samplings)
    gen = TextGenerator(endless, max_batch=3)  # fewer slots than requests: one waits, then joins
    results = [None] * 4

    def one(i, delay):
        time.sleep(delay)
        stats = GenerationStats()
        text = "".join(gen.generate(gen.encode(gen.format_prompt(PROMPTS[i], None)), samplings[i], [], stats))
        results[i] = (text, stats.token_ids)

    threads = [threading.Thread(target=one, args=(i, 0.01 * i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == alone
    assert 2 <= max(gen.engine.batch_sizes) <= 3


def test_a_prompt_that_arrives_mid_batch_is_prefilled_in_the_running_decode_step(endless):
    """On CPU a prompt arriving while others decode is prefilled in the same forward as their next
    token (Llama.forward_mixed); every text is still the text it gets alone."""
    samplings = [Sampling(max_new_tokens=40, temperature=0) for _ in PROMPTS[:3]]
    alone = generate_alone(endless, PROMPTS[:3], samplings)
    gen = TextGenerator(endless, max_batch=4)
    mixed = []
    forward_mixed = gen.model.forward_mixed
    gen.model.forward_mixed = lambda d, *a, **k: (mixed.append(d.shape[0]), forward_mixed(d, *a, **k))[1]
    results = [None] * 3
    started = [threading.Event() for _ in range(3)]

    def one(i):
        if i:
            started[i - 1].wait(30)  # the one before is decoding: its first text has arrived
        stats = GenerationStats()
        pieces = []
        for piece in gen.generate(gen.encode(gen.format_prompt(PROMPTS[i], None)), samplings[i], [], stats):
            pieces.append(piece)
            started[i].set()
        results[i] = ("".join(pieces), stats.token_ids)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == alone
    assert mixed[:2] == [1, 2]  # the second prompt beside one decoding row, the third beside two


def test_stop_sequence_of_one_request_does_not_touch_the_others(endless):
    samplings = [Sampling(max_new_tokens=40, temperature=0) for _ in PROMPTS[:3]]
    alone = generate_alone(endless, PROMPTS[:3], samplings)
    stop = alone[1][0][5:8]
    gen = TextGenerator(endless, max_batch=4)
    together = generate_together(gen, PROMPTS[:3], samplings, stops=[[], [stop], []])
    assert together[1][0] == alone[1][0][: alone[1][0].index(stop)]
    assert together[1][2].stop_reason == "stop_sequence"
    assert [r[0] for r in (together[0], together[2])] == [alone[0][0], alone[2][0]]


def test_closing_one_generation_leaves_the_others_running(endless):
    gen = TextGenerator(endless, max_batch=4)
    sampling = Sampling(max_new_tokens=60, temperature=0)
    alone = generate_alone(endless, PROMPTS[:2], [sampling, sampling])
    ids = [gen.encode(gen.format_prompt(p, None)) for p in PROMPTS[:2]]
    keep_stats, cut_stats = GenerationStats(), GenerationStats()
    keep, cut = gen.generate(ids[0], sampling, [], keep_stats), gen.generate(ids[1], sampling, [], cut_stats)
    kept = [next(keep), next(cut)][:1]
    cut.close()  # the client went away: cancel
    kept += list(keep)
    assert "".join(kept) == alone[0][0]
    assert cut_stats.output_tokens < 60


def test_prompt_too_long_is_refused_before_tokenising_it_all(endless):
    gen = TextGenerator(endless)
    huge = "Paris is nice. " * 2_000_000  # 30 MB
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"prompt: .*tokens does not fit the model's context of 2048"):
        gen.encode_prompt(huge)
    assert time.perf_counter() - start < 5  # generous bound on a loaded machine; typically ~10 ms
    just = "Paris " * 100
    assert gen.encode_prompt(just) == gen.encode(just)


# ---------------------------------------------------------------- through the real server


def stream_text(server, inputs, prediction_id=None):
    events = list(server.stream(inputs, prediction_id))
    final = events[-1][1]
    return "".join(d["chunk"] for e, d in events if e == "output"), final


def test_sixteen_streams_sixty_four_requests_lose_nothing(endless_llm_server, endless):
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(64)]
    samplings = [Sampling(max_new_tokens=8 + i % 9, temperature=0) for i in range(64)]
    alone = generate_alone(endless, prompts, samplings)

    def one(i):
        return stream_text(endless_llm_server, {"prompt": prompts[i], "temperature": 0,
                                                "max_new_tokens": samplings[i].max_new_tokens})

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    for (text, final), (want, _), sampling in zip(results, alone, samplings, strict=True):
        assert final["status"] == "succeeded", final
        assert text == want == "".join(final["output"])
        # Each prediction's metrics are its own (the stream may run on another prediction's thread).
        assert final["metrics"]["output_token_count"] == sampling.max_new_tokens


def test_cancel_takes_effect_within_a_second(endless_llm_server_single):
    """At concurrency 1 coglet raises its cancel in the generator; the engine drops the request at
    its next step. (At concurrency > 1: test_cancel_mid_batch_stops_that_stream_only.)"""
    server = endless_llm_server_single
    pid, events = uuid.uuid4().hex, []

    def consume():
        for event in server.stream({"prompt": "Go on", "max_new_tokens": 2000, "temperature": 0}, pid):
            events.append((time.monotonic(), event))

    reader = threading.Thread(target=consume)
    reader.start()
    while not any(e == "output" for _, (e, _) in events):
        time.sleep(0.01)
    asked = time.monotonic()
    assert CogServer.cancel(server, pid) == 200
    reader.join(timeout=30)
    done_at, (kind, final) = events[-1]
    assert kind == "completed" and final["status"] == "canceled"
    assert done_at - asked < 5  # ~0.01 s measured; generous for a loaded machine
    assert len(final["output"] or []) < 2000
    assert stream_text(server, {"prompt": "Hi", "max_new_tokens": 3, "temperature": 0})[1]["status"] == "succeeded"


def test_cancel_mid_batch_stops_that_stream_only(endless_llm_server, endless):
    """At concurrency > 1 coglet iterates the stream run() returned after its coroutine finished and
    delivers no cancel to it; concurrent_run hooks coglet's cancel (cogkit.coglet_cancel) so that
    the stream ends and the engine drops the request, while the other stream runs on unchanged."""
    server, cut_id, keep_id = endless_llm_server, uuid.uuid4().hex, uuid.uuid4().hex
    keep_inputs = {"prompt": PROMPTS[1], "max_new_tokens": 120, "temperature": 0}
    want = generate_alone(endless, [PROMPTS[1]], [Sampling(max_new_tokens=120, temperature=0)])[0][0]
    events = {cut_id: [], keep_id: []}

    def consume(pid, inputs):
        for event in server.stream(inputs, pid):
            events[pid].append((time.monotonic(), event))

    def outputs(pid):
        return sum(1 for _, (e, _) in list(events[pid]) if e == "output")

    readers = [threading.Thread(target=consume, args=(cut_id, {"prompt": "Go on", "max_new_tokens": 2000,
                                                                  "temperature": 0})),
               threading.Thread(target=consume, args=(keep_id, keep_inputs))]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 120
    while (outputs(cut_id) < 3 or outputs(keep_id) < 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    asked, kept_before = time.monotonic(), outputs(keep_id)
    assert CogServer.cancel(server, cut_id) == 200
    for reader in readers:
        reader.join(timeout=120)
    done_at, (kind, final) = events[cut_id][-1]
    assert kind == "completed" and final["status"] == "canceled"
    assert done_at - asked < 10  # ~0.1 s expected; generous for a loaded machine
    # The generation itself stopped (coglet forwards everything a stream yields, so without the
    # hook all 2000 tokens would arrive, after `canceled` was reported).
    assert outputs(cut_id) < 200
    _, (kind, kept) = events[keep_id][-1]
    assert kind == "completed" and kept["status"] == "succeeded", kept
    assert "".join(kept["output"]) == want
    assert kept_before < 120 and kept["metrics"]["output_token_count"] == 120  # it ran on after the cancel
    # The cancelled request's batch slot is free again: all 16 slots serve at once.
    with ThreadPoolExecutor(16) as pool:
        finals = list(pool.map(lambda i: stream_text(server, {"prompt": f"Hi {i}", "max_new_tokens": 4,
                                                              "temperature": 0})[1], range(16)))
    assert all(f["status"] == "succeeded" for f in finals)


def test_huge_prompt_fails_fast_through_the_server(endless_llm_server):
    start = time.monotonic()
    result = endless_llm_server.predict({"prompt": "Paris is nice. " * 60_000, "max_new_tokens": 5})
    assert result["status"] == "failed" and "context of 2048 tokens" in result["error"]
    assert time.monotonic() - start < 10  # a 0.9 MB body (under the schema's max_length); tokenising it all would take ~1 s


def test_concurrency_comes_from_the_overlay(endless_llm_server):
    health = requests.get(f"{endless_llm_server.url}/health-check").json()
    assert health["status"] in ("READY", "BUSY")
    from cogkit.concurrency import model_concurrency

    assert model_concurrency("llm") == 16
    log = endless_llm_server.log_path.read_text()
    assert "up to 16 concurrent generations" in log
