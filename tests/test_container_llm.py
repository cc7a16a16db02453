"""The LLM's image (~2 GB with torch): `make test-containers` only, not CI's `make test`.

Greedy text must be identical inside and outside the container, and the container's first boot must
restore the boot snapshot recorded inside the image at build time instead of recording its own.
"""

import os
import subprocess

import pytest

from tests.test_container import cogkit

pytestmark = pytest.mark.skipif(os.environ.get("COGKIT_TEST_BIG_IMAGES") != "1",
                                reason="the LLM image (~2 GB) is built by `make test-containers`")
TAG = f"cogkit-test-llm:{os.getpid()}"
PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def llm_image(engine, base_image, real_llm_weights):
    res = cogkit("build", "llm", "--cpu", "--tag", TAG, "--base", base_image, "--quiet",
                 env={"COGKIT_WEIGHTS_DIR": str(real_llm_weights.parent)})
    assert res.returncode == 0, res.stderr[-3000:]
    yield TAG
    subprocess.run(engine.cmd("rmi", "--force", TAG), capture_output=True)


def test_llm_container_answers_the_same_greedy_text_from_the_build_time_snapshot(llm_image, real_llm_weights):
    from cogkit.container import ContainerServer

    env = {"COGKIT_WEIGHTS_DIR": str(real_llm_weights.parent)}
    args = ["predict", "llm", "-i", f"prompt={PROMPT}", "-i", "temperature=0", "-i", "max_new_tokens=24"]
    outside = cogkit(*args, env=env)
    inside = cogkit(*args, "--container", "--image", llm_image, env=env)
    assert outside.returncode == 0 and inside.returncode == 0, inside.stderr
    assert inside.stdout == outside.stdout and "Paris" in inside.stdout

    # The first boot of a fresh container restores the snapshot the build recorded in the image.
    with ContainerServer(llm_image, "predict.py:LLMRunner") as server:
        server.start().wait_ready()
        log = "\n".join(server.setup_log_lines())
    assert "snapshot: restored /src/weights/llm/snapshot/" in log, log
    assert "snapshot: saved" not in log and "will be recorded" not in log

    bad = cogkit("predict", "llm", "-i", f"prompt={PROMPT}", "-i", "max_new_tokens=0", "--container",
                 "--image", llm_image, env=env)
    assert bad.returncode == 1 and "max_new_tokens" in bad.stderr
