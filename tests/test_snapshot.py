"""Boot-time snapshots through the real server: record, restore, corrupt, stale, concurrent boots."""

import json
import shutil
import threading

import pytest

from cogkit import snapshot as snapshot_mod
from tests.servers import serving
from cogkit.snapshot import SNAPSHOT_MANIFEST, Snapshot, snapshot_extra

INPUT = {"prompt": "Tell me a story", "max_new_tokens": 12, "temperature": 0.8, "seed": 11}


@pytest.fixture
def weights_root(tiny_weights_root, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(tiny_weights_root / "llm", root / "llm", ignore=shutil.ignore_patterns("snapshot"))
    return root


def boot(root):
    """Boot the real server on `root`; return (output text, setup log lines)."""
    with serving("predict.py:LLMRunner", root) as server:
        result = server.predict(INPUT)
        assert result["status"] == "succeeded", result
        return "".join(result["output"]), server.setup_log_lines()


def llm_snapshot(root, **kwargs):
    """The snapshot the LLM predictor uses on this (CPU) machine."""
    return Snapshot(root / "llm", "cpu", snapshot_extra("llm", "cpu"), **kwargs)


def snapshot_dirs(root):
    return sorted(p.name for p in (root / "llm" / "snapshot").iterdir())


def test_first_boot_records_later_boots_restore_same_output(weights_root):
    first, log1 = boot(weights_root)
    assert any("snapshot: none yet" in line for line in log1)
    [key] = snapshot_dirs(weights_root)
    assert llm_snapshot(weights_root).key == key
    assert llm_snapshot(weights_root).problems() == []

    second, log2 = boot(weights_root)
    assert any("snapshot: restored" in line for line in log2)
    assert not any("snapshot: saved" in line for line in log2)
    assert second == first


def test_corrupt_snapshot_is_logged_and_rebuilt_with_identical_output(weights_root):
    first, _ = boot(weights_root)
    [key] = snapshot_dirs(weights_root)
    warm = weights_root / "llm" / "snapshot" / key / "warmup.json"
    recorded = warm.read_text()
    warm.write_text(recorded.replace("[", "[1, ", 1))  # bit rot

    again, log = boot(weights_root)
    assert any("ignoring" in line and "warmup.json: differs" in line for line in log)
    assert json.loads(warm.read_text())["tokens"] == json.loads(recorded)["tokens"]  # rebuilt
    assert again == first
    assert llm_snapshot(weights_root).problems() == []


def test_snapshot_whose_warmup_disagrees_is_discarded(weights_root):
    first, _ = boot(weights_root)
    snap = llm_snapshot(weights_root)
    # A well-formed snapshot (checksums fixed up) that does not describe this model any more.
    warm = snap.path / "warmup.json"
    data = json.loads(warm.read_text())
    data["tokens"] = [t + 1 for t in data["tokens"]]
    warm.write_text(json.dumps(data))
    meta = json.loads((snap.path / SNAPSHOT_MANIFEST).read_text())
    from cogkit.weights import sha256_file
    meta["files"]["warmup.json"] = {"sha256": sha256_file(warm), "size": warm.stat().st_size}
    (snap.path / SNAPSHOT_MANIFEST).write_text(json.dumps(meta))

    again, log = boot(weights_root)
    assert any("warm-up output differs" in line for line in log)
    assert again == first
    assert json.loads(warm.read_text())["tokens"] != data["tokens"]


def test_snapshot_from_other_versions_is_stale_and_rebuilt(weights_root):
    first, _ = boot(weights_root)
    [key] = snapshot_dirs(weights_root)
    # What a torch upgrade leaves behind: a snapshot recorded under another key.
    (weights_root / "llm" / "snapshot" / key).rename(weights_root / "llm" / "snapshot" / "0000000000000000")
    again, log = boot(weights_root)
    assert any("stale snapshot(s) 0000000000000000" in line for line in log)
    assert again == first
    assert key in snapshot_dirs(weights_root)


def test_key_covers_versions_device_and_weights(weights_root, monkeypatch):
    base = Snapshot(weights_root / "llm", "cpu")
    assert Snapshot(weights_root / "llm", "cpu").key == base.key
    assert Snapshot(weights_root / "llm", "cpu", extra={"compile": True}).key != base.key
    real_version = snapshot_mod.version
    monkeypatch.setattr(snapshot_mod, "version", lambda pkg: "9.9.9" if pkg == "torch" else real_version(pkg))
    assert Snapshot(weights_root / "llm", "cpu").key != base.key
    monkeypatch.undo()
    manifest = weights_root / "llm" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"dtype"', '"dtype" ', 1))
    assert Snapshot(weights_root / "llm", "cpu").key != base.key


def test_two_workers_booting_at_once_leave_one_intact_snapshot(weights_root):
    outputs, errors = [], []

    def worker():
        try:
            outputs.append(boot(weights_root)[0])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(outputs) == 2 and outputs[0] == outputs[1]
    assert len(snapshot_dirs(weights_root)) == 1  # no half-written temporary folders left
    assert llm_snapshot(weights_root).problems() == []


def test_save_failure_never_raises(tmp_path, weights_root):
    snap = llm_snapshot(weights_root, log=lambda m: None)

    def broken_fill(folder):
        raise OSError("disk full")

    assert snap.save(broken_fill) is False
    assert not snap.path.exists()
    assert [p for p in snap.root.iterdir()] == []


def test_boot_snapshot_records_checks_the_warmup_and_replaces_a_disagreeing_one(weights_root, monkeypatch):
    """The dance every predictor's setup() shares (cogkit.snapshot.BootSnapshot), in process."""
    from cogkit.snapshot import BootSnapshot, write_warmup

    folder, logs, extra_calls = weights_root / "llm", [], []

    def extra():
        extra_calls.append(1)
        return {"engine": "test"}

    monkeypatch.setenv("COGKIT_SNAPSHOT", "0")
    off = BootSnapshot(folder, "cpu", extra, log=logs.append)
    off.record(lambda into: write_warmup(into, output="a"))
    assert (off.enabled, off.restored, extra_calls, logs) == (False, None, [], [])
    assert not (folder / "snapshot").exists()  # nothing read, nothing written

    monkeypatch.setenv("COGKIT_SNAPSHOT", "1")
    first = BootSnapshot(folder, "cpu", extra, log=logs.append)
    assert first.restored is None and not first.check_warmup("output", "a")
    first.record(lambda into: write_warmup(into, output="a"))
    [key] = snapshot_dirs(weights_root)

    same = BootSnapshot(folder, "cpu", extra, log=logs.append)
    assert same.restored is not None and same.check_warmup("output", "a")
    same.record(lambda into: write_warmup(into, output="never written"))  # restored: nothing to record
    assert json.loads((folder / "snapshot" / key / "warmup.json").read_text()) == {"output": "a"}

    other = BootSnapshot(folder, "cpu", extra, log=logs.append)
    assert not other.check_warmup("output", "b", "text")
    assert other.restored is None and snapshot_dirs(weights_root) == []
    assert logs[-1] == "snapshot: warm-up text differs from the snapshot's; discarding it"
    other.record(lambda into: write_warmup(into, output="b"))
    assert json.loads((folder / "snapshot" / key / "warmup.json").read_text()) == {"output": "b"}
