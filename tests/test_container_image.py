"""The image model's image (~2.5 GB: torch, diffusers): `make test-containers` only.

A seeded picture must be byte-identical inside and outside the container, and the container's first
boot must restore the snapshot (with its diffusers-free fast path) recorded at build time.
"""

import os
import subprocess

import pytest

from tests.test_container import cogkit

pytestmark = pytest.mark.skipif(os.environ.get("COGKIT_TEST_BIG_IMAGES") != "1",
                                reason="the image model's image (~2.5 GB) is built by `make test-containers`")
TAG = f"cogkit-test-image:{os.getpid()}"


@pytest.fixture(scope="module")
def sd_image(engine, base_image, image_weights_root):
    res = cogkit("build", "image", "--cpu", "--tag", TAG, "--base", base_image, "--quiet",
                 env={"COGKIT_WEIGHTS_DIR": str(image_weights_root)})
    assert res.returncode == 0, res.stderr[-3000:]
    yield TAG
    subprocess.run(engine.cmd("rmi", "--force", TAG), capture_output=True)


def test_seeded_picture_is_byte_identical_in_the_container(sd_image, image_weights_root, tmp_path):
    from cogkit.container import ContainerServer

    env = {"COGKIT_WEIGHTS_DIR": str(image_weights_root)}
    args = ["predict", "image", "-i", "prompt=a red fox", "-i", "seed=7", "-i", "output_format=png",
            "-i", "num_inference_steps=4"]
    outside = cogkit(*args, "-o", str(tmp_path / "local.png"), env=env, cwd=tmp_path)
    inside = cogkit(*args, "-o", str(tmp_path / "container.png"), "--container", "--image", sd_image,
                    env=env, cwd=tmp_path)
    assert outside.returncode == 0, outside.stderr
    assert inside.returncode == 0, inside.stderr
    assert (tmp_path / "container.0.png").read_bytes() == (tmp_path / "local.0.png").read_bytes()

    with ContainerServer(sd_image, "predict.py:ImageRunner") as server:
        server.start().wait_ready()
        log = "\n".join(server.setup_log_lines())
    assert "snapshot: restored /src/weights/image/snapshot/" in log, log
    assert "snapshot: saved" not in log
