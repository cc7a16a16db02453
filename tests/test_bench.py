"""`cogkit bench boot` end to end on the tiny model: every variant boots the real server and agrees."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_boot_runs_all_variants_and_they_agree(tiny_weights_root, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "COGKIT_WEIGHTS_DIR": str(tiny_weights_root)}
    res = subprocess.run([sys.executable, "-m", "cogkit.cli", "bench", "boot", "llm", "--runs", "1",
                          "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"a_naive", "b_built", "c_snapshot"}
    assert report["same_output"] is True  # transformers' generate and cogkit's loop: same greedy tokens
    assert report["variants"]["c_snapshot"]["output"]
    for name in ("b_built", "c_snapshot"):
        assert {"imports", "load", "warmup"} <= set(report["variants"][name]["phases_median"])
    assert report["floor_s"]["median"] > 0
    assert set(report["ratios"]) == {"a_over_c", "b_over_c", "c_over_floor"}
    assert "c_at_least_10x_faster_than_a" in report["criteria"]
    assert "boot to READY" in res.stdout and "ratios:" in res.stdout
