"""The TTS boot snapshot: onnxruntime's optimised graph of the Piper voice, recorded on the first boot,
loaded with optimisation off on the next, checked against the warm-up audio; a damaged snapshot is
logged and rebuilt without changing a sample."""

import shutil

import pytest

from cogkit.snapshot import Snapshot
from models.audio.snapshot import OPTIMIZED_GRAPH
from models.audio.tts import snapshot_extra
from tests.fixtures_audio import FOX, decode_data_uri
from tests.servers import serving


@pytest.fixture()
def tts_root(real_tts_weights, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(real_tts_weights, root / "tts", ignore=shutil.ignore_patterns("snapshot"))
    return root


def boot_and_speak(root, **env):
    with serving("predict.py:TTSRunner", root, setup_timeout=180, **env) as server:
        result = server.predict({"text": FOX, "variation": 0.0, "output_format": "wav"})
        assert result["status"] == "succeeded", result.get("error")
        return decode_data_uri(result["output"]), server.setup_log_lines()


def test_second_boot_loads_the_optimised_graph_and_sounds_the_same(tts_root):
    first, log1 = boot_and_speak(tts_root)
    assert any("snapshot: saved" in line for line in log1), log1
    snap = Snapshot(tts_root / "tts", "cpu", snapshot_extra("cpu"), log=lambda m: None)
    assert snap.problems() == [] and (snap.path / OPTIMIZED_GRAPH).stat().st_size > 1_000_000
    second, log2 = boot_and_speak(tts_root)
    assert any("snapshot: restored" in line for line in log2), log2
    assert not any("differs" in line for line in log2), log2
    assert second == first
    off, _ = boot_and_speak(tts_root, COGKIT_SNAPSHOT="0")
    assert off == first


def test_a_damaged_snapshot_is_rebuilt(tts_root):
    first, _ = boot_and_speak(tts_root)
    snap = Snapshot(tts_root / "tts", "cpu", snapshot_extra("cpu"), log=lambda m: None)
    graph = snap.path / OPTIMIZED_GRAPH
    graph.write_bytes(graph.read_bytes()[:-100] + b"\0" * 100)
    again, log = boot_and_speak(tts_root)
    assert any("differs from snapshot.json" in line for line in log), log
    assert any("snapshot: saved" in line for line in log), log
    assert again == first and snap.problems() == []
