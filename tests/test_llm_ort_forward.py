"""onnxruntime's graph of the forward (models/llm/ort_forward.py) against the torch model's."""

import dataclasses

import pytest
import torch

from models.llm.llama import Int8Linear, load_llama
from models.llm.ort_forward import OrtForward, covers
from models.llm.text_generation import GenerationStats, Sampling, TextGenerator
from tests.test_llm_batching import generate_together

PROMPTS = ["Hello there", "Tell me about Paris", "Numbers", "The quick brown fox"]


def torch_and_ort_forwards(folder, histories: list[list[int]], next_ids: list[int]):
    """The logits and cache of one decode step of rows with these histories, on torch, then on
    onnxruntime from the same cache."""
    model = load_llama(folder, batched=True)
    model.setup_cache(64, slots=len(histories))
    with torch.no_grad():
        for slot, ids in enumerate(histories):
            model(torch.tensor([ids]), torch.arange(len(ids))[None], first_slot=slot)
        before = [(a.kv_cache.k.clone(), a.kv_cache.v.clone()) for a in (l.self_attn for l in model.model.layers)]
        ids = torch.tensor([[i] for i in next_ids])
        lengths = [len(h) + 1 for h in histories]
        want = model(ids, torch.tensor([[n - 1] for n in lengths]), kv_len=max(lengths))
        want_cache = [(a.kv_cache.k.clone(), a.kv_cache.v.clone()) for a in (l.self_attn for l in model.model.layers)]
        for layer, (k, v) in zip(model.model.layers, before, strict=True):
            layer.self_attn.kv_cache.k.copy_(k), layer.self_attn.kv_cache.v.copy_(v)
        got = OrtForward(model, threads=1)(ids, lengths)
    return want, got, want_cache, model


@pytest.mark.parametrize("rows", [1, 3])
def test_the_step_gives_the_torch_models_logits_and_cache(tiny_weights_root, rows):
    histories = [[5, 17, 42, 99, 3, 250, 7], [11, 12], [21, 22, 23, 24, 25]][:rows]  # lengths differ
    want, got, want_cache, model = torch_and_ort_forwards(tiny_weights_root / "llm", histories, [8, 13, 26][:rows])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    for layer, (k, v) in zip(model.model.layers, want_cache, strict=True):  # written in place, where torch writes
        torch.testing.assert_close(layer.self_attn.kv_cache.k, k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.self_attn.kv_cache.v, v, atol=1e-5, rtol=1e-5)


def test_a_prompt_chunk_after_a_past_gives_the_torch_models_logits_and_cache(tiny_weights_root):
    """A prompt whose start is already in the cache (the prefix cache's case): its next chunk, as one
    row of several tokens, gives torch's logits for its last token and torch's keys and values."""
    model = load_llama(tiny_weights_root / "llm", batched=True)
    model.setup_cache(64, slots=2)
    start, chunk = [5, 17, 42, 99, 3, 250, 7], [8, 13, 26, 31, 44]
    with torch.no_grad():
        for slot in (0, 1):
            model(torch.tensor([start]), torch.arange(7)[None], first_slot=slot)
        want = model(torch.tensor([chunk]), torch.arange(7, 12)[None], first_slot=0)
        got = OrtForward(model, threads=1)(torch.tensor([chunk]), [12], first_slot=1)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    for layer in model.model.layers:
        cache = layer.self_attn.kv_cache
        torch.testing.assert_close(cache.k[1, :, :12], cache.k[0, :, :12], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.v[1, :, :12], cache.v[0, :, :12], atol=1e-5, rtol=1e-5)


def test_a_scaled_rotary_table_carries_over(tmp_path):
    """Llama 3's rope scaling and a head size that is not hidden / heads: the graph takes the model's
    own rotary table, so positions rotate as torch rotates them."""
    from cogkit.build import build_weights
    from tests.tiny_llms import make_tiny_checkpoint

    source = make_tiny_checkpoint("llama3", tmp_path / "source")
    build_weights("llm", source=str(source), dtype="float32", dest=tmp_path / "llm", log=lambda *a: None)
    history = list(range(3, 80))  # past the original context of 64, where the scaling bends
    want, got, _, _ = torch_and_ort_forwards(tmp_path / "llm", [history], [5])
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_models_it_does_not_cover_keep_the_torch_step(tiny_weights_root):
    model = load_llama(tiny_weights_root / "llm")
    assert covers(model.cfg, model) is None
    assert "biases" in covers(dataclasses.replace(model.cfg, attention_bias=True), model)
    assert "norms" in covers(dataclasses.replace(model.cfg, qk_norm=True), model)
    sliding = dataclasses.replace(model.cfg, sliding_window=4, sliding_layers=[True] * model.cfg.num_hidden_layers)
    assert "sliding" in covers(sliding, model)
    assert "float32" in covers(model.cfg, model.to(torch.bfloat16))


def test_an_int8_model_runs_on_the_graph_each_row_as_alone(tiny_llm_source, tmp_path):
    """An int8 build's projections run as onnxruntime's integer GEMM with Int8Linear's quantisation
    (each row scaled by its own absmax): logits close to torch's int8 ones, and each row of a batched
    step bit for bit what it gives alone, so greedy text does not depend on the batch."""
    from cogkit.build import build_weights

    build_weights("llm", source=str(tiny_llm_source), dtype="int8", dest=tmp_path / "llm", log=lambda *a: None)
    histories = [[5, 17, 42, 99, 3, 250, 7], [11, 12], [21, 22, 23, 24, 25]]
    want, got, _, model = torch_and_ort_forwards(tmp_path / "llm", histories, [8, 13, 26])
    assert covers(model.cfg, model) is None
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cos > 0.999, cos
    forward = OrtForward(model, threads=1)
    # The graph holds its own int8 weights: fbgemm's copy can go (the engine drops it once the graph runs).
    assert model.drop_packed_weights() > 0
    assert all(m.packed is None for m in model.modules() if isinstance(m, Int8Linear))
    for slot, history in enumerate(histories):  # each row again, alone, from the cache the batch wrote
        alone = forward(torch.tensor([[[8, 13, 26][slot]]]), [len(history) + 1], first_slot=slot)
        assert torch.equal(alone[0], got[slot]), slot


def test_the_engine_moves_its_forwards_to_onnxruntime_with_the_same_text(endless_weights_root, monkeypatch):
    """Greedy text alone and four at once, with prompts and decode steps on onnxruntime, equals the
    torch engine's; once the graph is built (and steps of several rows are the graph's, as measured
    on a machine where it is faster) no forward runs on torch, and torch's packed weight copies are
    freed."""
    folder = endless_weights_root / "llm"
    samplings = [Sampling(max_new_tokens=24, temperature=0)] * len(PROMPTS)
    torch_gen = TextGenerator(folder, max_batch=4)
    want = [generate(torch_gen, p, s) for p, s in zip(PROMPTS, samplings, strict=True)]

    monkeypatch.setenv("COGKIT_LLM_ROWS", "graph")
    gen = TextGenerator(folder, max_batch=4)
    gen.forward_on_onnxruntime().join()
    assert packed_copies(gen.model)  # a batching engine's float32 model has them until the graph runs
    calls, torch_calls = [], []  # (rows, tokens) of each call of the graph; forwards on torch
    step, forward = gen.model.ort_forward, gen.model.forward
    gen.model.ort_forward = lambda ids, *a: (calls.append(tuple(ids.shape)), step(ids, *a))[1]
    gen.model.forward = lambda *a, **k: (torch_calls.append(1), forward(*a, **k))[1]
    assert [generate(gen, p, s) for p, s in zip(PROMPTS, samplings, strict=True)] == want
    prompts = [c for c in calls if c[1] > 1]
    assert len(prompts) == len(PROMPTS)  # each prompt in one call of its own tokens
    assert calls.count((1, 1)) == len(PROMPTS) * 23  # each token after a prompt's first
    # Now every prompt is in the prefix cache but its last token: each joins a decode step's call.
    prefill_calls = []
    prefill = gen.engine._prefill_chunk
    gen.engine._prefill_chunk = lambda *a, **k: (prefill_calls.append(1), prefill(*a, **k))[1]
    assert together(gen, samplings) == want
    assert prefill_calls == []
    assert max(rows for rows, tokens in calls if tokens == 1) >= 2  # rows decoded together on the graph
    assert torch_calls == []
    assert packed_copies(gen.model) == [] and packed_copies(torch_gen.model)


def test_an_int8_models_requests_wait_for_the_graph(tiny_llm_source, tmp_path, monkeypatch):
    """An int8 model's text on the graph is not its text on torch: a request that comes while the graph
    is being built waits for it, so that no forward runs on torch and its text is any later request's."""
    import time

    import models.llm.ort_forward as ort_forward
    from cogkit.build import build_weights

    build_weights("llm", source=str(tiny_llm_source), dtype="int8", dest=tmp_path / "llm", log=lambda *a: None)
    gen = TextGenerator(tmp_path / "llm", max_batch=4)
    torch_calls = []
    forward = gen.model.forward
    gen.model.forward = lambda *a, **k: (torch_calls.append(1), forward(*a, **k))[1]
    build = ort_forward.OrtForward.__init__

    def slow_build(self, *args, **kwargs):  # the tiny model's graph builds too fast to come in between
        time.sleep(0.5)
        build(self, *args, **kwargs)

    monkeypatch.setattr(ort_forward.OrtForward, "__init__", slow_build)
    sampling = Sampling(max_new_tokens=16, temperature=0)
    building = gen.forward_on_onnxruntime()
    assert building.is_alive()
    first = generate(gen, PROMPTS[0], sampling)
    assert torch_calls == [] and gen.model.ort_forward is not None
    assert generate(gen, PROMPTS[0], sampling) == first


@pytest.mark.parametrize("rows", [None, "torch"])
def test_steps_of_several_rows_run_where_they_measured_faster(endless_weights_root, monkeypatch, rows):
    """By default the engine times its first steps of several rows on the graph and on torch, pair by
    pair, and keeps the faster (`RowsTrial`); COGKIT_LLM_ROWS=torch keeps them on torch. Either way
    the text four at once is the text alone, and torch's packed copies stay only where torch runs."""
    from models.llm.engine import RowsTrial

    if rows:
        monkeypatch.setenv("COGKIT_LLM_ROWS", rows)
    folder = endless_weights_root / "llm"
    sampling = Sampling(max_new_tokens=40, temperature=0)  # 4 rows for ~35 steps: the trial needs 14 at one row count
    gen = TextGenerator(folder, max_batch=4)
    gen.forward_on_onnxruntime().join()
    want = [generate(gen, p, sampling) for p in PROMPTS]
    torch_rows = []  # the row count of each decode step on torch
    forward = gen.model.forward
    gen.model.forward = lambda ids, *a, **k: (torch_rows.append(ids.shape[0]), forward(ids, *a, **k))[1]
    assert together(gen, [sampling] * len(PROMPTS)) == want
    trial = gen.engine.rows
    if rows is None:
        assert len(trial.ratios) == RowsTrial.PAIRS and trial.choice in ("graph", "torch")
        assert all(ratio > 0 for ratio in trial.ratios)
    if rows == "torch":
        assert trial.choice == "torch" and not trial.ratios
    steps = [n for n in torch_rows if n > 1]
    assert len(steps) >= (RowsTrial.PAIRS if rows is None else 10)  # steps of several rows ran on torch
    # decided on the graph: torch's packed copies are gone after the next step
    generate(gen, PROMPTS[0], Sampling(max_new_tokens=2, temperature=0))
    assert bool(packed_copies(gen.model)) == (trial.choice == "torch")


def test_the_rows_trial_pairs_steps_of_one_row_count_and_keeps_torch_only_when_clearly_faster():
    from models.llm.engine import RowsTrial

    def decide(torch_over_graph: float, rows=(8, 8)) -> RowsTrial:
        trial = RowsTrial()
        while trial.choice is None:
            assert not trial.next_on_torch(rows[0])  # a pair starts on the graph
            trial.record(rows[0], False, 0.030)
            if not trial.next_on_torch(rows[1]):  # the row count changed: the pair starts again
                return trial
            trial.record(rows[1], True, 0.030 * torch_over_graph)
        return trial

    assert decide(0.90).choice == "torch" and decide(0.90).next_on_torch(3)
    assert decide(0.97).choice == "graph" and not decide(0.97).next_on_torch(8)
    assert decide(0.90, rows=(8, 7)).choice is None


def test_a_bad_rows_setting_names_the_variable(endless_weights_root, monkeypatch):
    monkeypatch.setenv("COGKIT_LLM_ROWS", "fast")
    with pytest.raises(ValueError, match="COGKIT_LLM_ROWS: must be graph or torch"):
        TextGenerator(endless_weights_root / "llm", max_batch=4)


def packed_copies(model):
    return [m for m in model.modules() if getattr(m, "packed", None) is not None]


def together(gen, samplings):
    """PROMPTS all at once (a thread each), as `generate` gives them: [(text, token ids)]."""
    return [(text, ids) for text, ids, _ in generate_together(gen, PROMPTS, samplings)]


def generate(gen, prompt, sampling):
    stats = GenerationStats()
    text = "".join(gen.generate(gen.encode(gen.format_prompt(prompt, None)), sampling, [], stats))
    return text, stats.token_ids


def test_no_graph_where_memory_is_short(tiny_weights_root, monkeypatch, capsys):
    import models.llm.ort_forward as ort_forward

    monkeypatch.setattr(ort_forward, "available_memory", lambda: 1000.0)  # this machine has plenty
    model = load_llama(tiny_weights_root / "llm")
    assert ort_forward.build_in_background(model, threads=1) is None
    assert model.ort_forward is None
    assert "decode steps run on torch" in capsys.readouterr().out


def test_the_graph_is_written_without_onnxs_c_extension(tiny_weights_root):
    """`import onnx` initialises a C extension that holds the GIL for ~0.7 s: on the build thread that
    stalled the first requests after boot. The graph needs only onnx's protobuf classes."""
    import subprocess
    import sys

    code = ("import sys; from models.llm.llama import load_llama; from models.llm.ort_forward import OrtForward;"
            f"OrtForward(load_llama({str(tiny_weights_root / 'llm')!r}), threads=1);"
            "assert 'onnx.onnx_cpp2py_export' not in sys.modules, 'onnx was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
