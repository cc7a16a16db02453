"""`cogkit predict image` as a user runs it (a subprocess, the real server, the tiny pipeline), and the
other boots of the image predictor: restoring its snapshot, and the naive predictor the bench compares."""

import base64
import json
import os
import subprocess
import sys

from PIL import Image

from cogkit.server import CogServer
from models import get_model
from tests.conftest import ROOT


def cogkit(*args, weights, cwd, timeout=180):
    env = {**os.environ, "COGKIT_WEIGHTS_DIR": str(weights)}
    return subprocess.run([sys.executable, "-m", "cogkit.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_predict_writes_two_pngs_and_json_lists_them(image_weights_root, tmp_path):
    res = cogkit("predict", "image", "-i", "prompt=a red fox", "-i", "num_outputs=2", "-i", "output_format=png",
                 "-i", "num_inference_steps=4", "-o", str(tmp_path / "fox.png"), "--json",
                 weights=image_weights_root, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["status"] == "succeeded"
    assert body["output"] == [str(tmp_path / "fox.0.png"), str(tmp_path / "fox.1.png")]
    for path in body["output"]:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (64, 64)
    assert isinstance(body["metrics"]["seed"], int)


def test_predict_img2img_from_a_local_file(image_weights_root, tmp_path):
    Image.new("RGB", (80, 120), (200, 40, 40)).save(tmp_path / "in.png")
    res = cogkit("predict", "image", "-i", "prompt=a red fox", "-i", "image=@in.png", "-i", "prompt_strength=0.5",
                 "-i", "num_inference_steps=4", "-i", "output_format=jpg", "-i", "seed=7", "-o", "out/fox.jpg",
                 weights=image_weights_root, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    written = tmp_path / "out" / "fox.0.jpg"
    assert json.loads(res.stdout) == ["out/fox.0.jpg"]
    with Image.open(written) as img:
        assert img.format == "JPEG" and img.size == (80, 120)


def data_uris(result) -> list[bytes]:
    assert result["status"] == "succeeded", result
    return [base64.b64decode(uri.partition(",")[2]) for uri in result["output"]]


def test_second_boot_restores_the_snapshot_and_naive_boot_agrees(image_server, image_weights_root, tmp_path):
    """What `cogkit bench boot image` compares: the same bench_input gives the same files from the
    running server, a fresh boot that restores the snapshot, and the naive predictor on the source."""
    from models.image.build import builtin_source

    spec = get_model("image")
    reference = data_uris(image_server.predict(spec.bench_input))
    env = {"COGKIT_WEIGHTS_DIR": str(image_weights_root)}
    with CogServer(spec.runner, env=env, setup_timeout=120, root=ROOT) as again:
        again.start().wait_ready()
        assert any("snapshot: restored" in line for line in again.setup_log_lines())
        assert data_uris(again.predict(spec.bench_input)) == reference
    source = builtin_source("tiny-sd", tmp_path / "source")
    with CogServer(spec.naive_runner, env={**env, "COGKIT_SOURCE_PATH": str(source)}, setup_timeout=120) as naive:
        naive.start().wait_ready()
        assert data_uris(naive.predict(spec.bench_input)) == reference


def test_snapshot_whose_warmup_differs_is_replaced(image_server, image_weights_root, tmp_path):
    """A snapshot that is intact but records another warm-up picture no longer describes this
    pipeline: the boot logs it, discards it and records a fresh one."""
    import hashlib
    import shutil

    root = tmp_path / "weights"
    shutil.copytree(image_weights_root, root)
    [warmup] = (root / "image" / "snapshot").glob("*/warmup.json")
    warmup.write_text(json.dumps({"fingerprint": "0" * 64}))
    meta_path = warmup.parent / "snapshot.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["warmup.json"] = {"sha256": hashlib.sha256(warmup.read_bytes()).hexdigest(),
                                    "size": warmup.stat().st_size}
    meta_path.write_text(json.dumps(meta))
    with CogServer(get_model("image").runner, env={"COGKIT_WEIGHTS_DIR": str(root)}, setup_timeout=120) as server:
        server.start().wait_ready()
        log = "\n".join(server.setup_log_lines())
    assert "snapshot: restored" in log
    assert "warm-up picture differs from the snapshot's; discarding it" in log
    assert "snapshot: saved" in log
    assert json.loads(warmup.read_text())["fingerprint"] != "0" * 64
