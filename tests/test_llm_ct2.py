"""The LLM on CTranslate2 (`cogkit build-weights llm --engine ctranslate2`), with the real SmolLM2
weights: the conversion is checked against the torch decoder, then batching, stop sequences, cancel
and the refusals, in process and once through the real coglet server."""

import json
import subprocess
import sys
import threading
import time

import pytest

from cogkit.build import build_weights
from models.llm.text_generation import GenerationStats, Sampling, TextGenerator
from tests.servers import serving

PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.", "List three prime numbers.",
           "Who wrote Hamlet?", "Explain photosynthesis to a child.", "What is 12 times 7?"]


@pytest.fixture(scope="module")
def ct2_root(tmp_path_factory, real_llm_weights):
    root = tmp_path_factory.mktemp("ct2-weights")
    build_weights("llm", source=str(real_llm_weights), dtype="float32", dest=root / "llm",
                  engine="ctranslate2", log=lambda *a: None)
    return root


def greedy(gen, prompt, max_new=24, stops=()):
    stats = GenerationStats()
    text = "".join(gen.generate(gen.encode(gen.format_prompt(prompt, None)),
                                Sampling(max_new_tokens=max_new, temperature=0), list(stops), stats))
    return text, stats


def test_build_records_the_engine_and_ctranslate2_files(ct2_root):
    manifest = json.loads((ct2_root / "llm" / "manifest.json").read_text())
    assert manifest["engine"] == "ctranslate2" and manifest["dtype"] == "float32"
    assert {"ctranslate2/model.bin", "ctranslate2/config.json", "ctranslate2/vocabulary.json",
            "tokenizer.json", "config.json"} <= set(manifest["files"])
    assert "model.safetensors" not in manifest["files"]


def test_greedy_text_is_the_torch_decoders_text(ct2_root, real_llm_weights):
    # Same float32 weights, two engines: a wrong mapping (q/k/v order, rotary layout, tied head)
    # would change the text within a few tokens.
    torch_gen, ct2_gen = TextGenerator(real_llm_weights), TextGenerator(ct2_root / "llm")
    assert ct2_gen.engine_name == "ctranslate2" and ct2_gen.model is None
    for prompt in PROMPTS[:3]:
        assert greedy(ct2_gen, prompt)[1].token_ids == greedy(torch_gen, prompt)[1].token_ids
    text, stats = greedy(ct2_gen, PROMPTS[0])
    assert "Paris" in text and stats.stop_reason == "eos"


def test_requests_together_share_a_batch_and_get_their_text_alone(ct2_root):
    gen = TextGenerator(ct2_root / "llm", max_batch=8)
    alone = [greedy(gen, p)[1].token_ids for p in PROMPTS]
    together = [None] * len(PROMPTS)

    def one(i):
        together[i] = greedy(gen, PROMPTS[i])[1].token_ids

    # One request first (the longest answer), then the rest while it runs: CTranslate2 cannot take
    # them into its running call, so they wait and start together, however slowly their threads
    # start on a loaded machine.
    first = PROMPTS.index("Explain photosynthesis to a child.")
    threads = {i: threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))}
    before = len(gen.engine.batch_sizes)  # the calls `alone` made
    threads[first].start()
    while len(gen.engine.batch_sizes) == before:
        time.sleep(0.001)
    for i, t in threads.items():
        if i != first:
            t.start()
    for t in threads.values():
        t.join(timeout=120)
    calls = gen.engine.batch_sizes[before:]
    assert calls[0] == 1 and max(calls) >= 4  # the others shared a call
    assert together == alone


def test_stop_sequence_and_cancel_leave_the_other_rows_alone(ct2_root):
    gen = TextGenerator(ct2_root / "llm", max_batch=4)
    text, stats = greedy(gen, PROMPTS[0], stops=["Paris"])
    assert stats.stop_reason == "stop_sequence" and "Paris" not in text and text.startswith("The capital")
    want = greedy(gen, PROMPTS[3], max_new=40)[1].token_ids
    stop = threading.Event()
    results = {}

    def cancelled():
        stats = GenerationStats()
        for _ in gen.generate(gen.encode(gen.format_prompt("Tell me a long story about a dragon.", None)),
                              Sampling(max_new_tokens=200, temperature=0), [], stats, stop):
            if stats.output_tokens >= 3:
                stop.set()
        results["cancelled"] = stats

    def kept():
        results["kept"] = greedy(gen, PROMPTS[3], max_new=40)[1]

    threads = [threading.Thread(target=cancelled), threading.Thread(target=kept)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results["cancelled"].stop_reason == "canceled" and results["cancelled"].output_tokens < 20
    assert results["kept"].token_ids == want


def test_boot_and_generation_import_no_torch(ct2_root):
    code = ("import sys; from pathlib import Path; from models.llm.text_generation import TextGenerator; "
            f"g = TextGenerator(Path({str(ct2_root / 'llm')!r})); print(g.warmup(2)); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr  # also: no abort at exit with CTranslate2 threads alive
    assert out.stdout.split()[-1] == "False"


def test_unsupported_builds_are_refused_with_the_reason(tmp_path, real_llm_weights):
    with pytest.raises(ValueError, match="dtype: the ctranslate2 engine builds float32 or int8"):
        build_weights("llm", source=str(real_llm_weights), dtype="bfloat16", dest=tmp_path / "a",
                      engine="ctranslate2", log=lambda *a: None)
    with pytest.raises(ValueError, match="engine: whisper weights can be built for its one runtime only"):
        build_weights("whisper", dest=tmp_path / "b", engine="ctranslate2", log=lambda *a: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_served_by_coglet_streams_and_refuses_a_seed_it_cannot_honour(ct2_root):
    with serving("predict.py:LLMRunner", ct2_root, COG_MAX_CONCURRENCY="4") as server:
        events = list(server.stream({"prompt": PROMPTS[0], "temperature": 0, "max_new_tokens": 20}))
        final = events[-1][1]
        assert final["status"] == "succeeded", final
        assert len([e for e, _ in events if e == "output"]) >= 3 and "Paris" in "".join(final["output"])
        assert final["metrics"]["stop_reason"] == "eos"
        refused = server.predict({"prompt": "Hi", "temperature": 0.7, "seed": 3})
        assert refused["status"] == "failed"
        assert refused["error"].startswith("seed:") and "CTranslate2" in refused["error"]
        sampled = server.predict({"prompt": "Hi", "temperature": 0.7, "max_new_tokens": 5})
        assert sampled["status"] == "succeeded" and sampled["metrics"]["output_token_count"] >= 1


def test_sixteen_streams_times_sixty_four_requests_lose_nothing(ct2_root):
    gen = TextGenerator(ct2_root / "llm", max_batch=16)
    want = {p: greedy(gen, p, max_new=6)[1].token_ids for p in PROMPTS}
    got = []

    def client(k):
        for j in range(4):
            prompt = PROMPTS[(k + j) % len(PROMPTS)]
            got.append((prompt, greedy(gen, prompt, max_new=6)[1].token_ids))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(got) == 64 and all(ids == want[p] for p, ids in got)
    assert max(gen.engine.batch_sizes) >= 8
