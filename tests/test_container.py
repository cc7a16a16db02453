"""The model's image, built and run by a real engine: `cogkit build`, `--container`, push to a
registry on 127.0.0.1. CI keeps to the smallest image (tts: no torch); `make test-containers` runs
the LLM's too (tests/test_container_llm.py)."""

import json
import os
import subprocess
import sys

import pytest

from cogkit.schema import load_predictor_info, openapi_schema
from cogkit.ship.config import compose
from tests.fixtures_container import ROOT, project_copy

FOX = "The quick brown fox jumps over the lazy dog."
TAG = f"cogkit-test-tts:{os.getpid()}"  # several test sessions may share one engine


def cogkit(*args, env=None, cwd=ROOT, timeout=1800):
    return subprocess.run([sys.executable, "-m", "cogkit.cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def in_image(engine, image, code: str) -> str:
    res = subprocess.run(engine.run_cmd("--rm", "--entrypoint", "python", image, "-c", code),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def tts_image(engine, base_image, real_tts_weights):
    res = cogkit("build", "tts", "--tag", TAG, "--base", base_image, "--quiet",
                 env={"COGKIT_WEIGHTS_DIR": str(real_tts_weights.parent)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"built {TAG}" in res.stderr
    yield TAG
    subprocess.run(engine.cmd("rmi", "--force", TAG), capture_output=True)


def test_tts_image_carries_cogs_labels_schema_and_only_its_own_model(engine, tts_image):
    from cogkit.image_build import image_labels

    labels = image_labels(tts_image)
    schema = openapi_schema(load_predictor_info("predict.py:TTSRunner", ROOT))
    assert labels["run.cog.version"] == "0.23.1"
    assert labels["run.cog.has_init"] == "true"
    config = json.loads(labels["run.cog.config"])
    assert config["run"] == "predict.py:TTSRunner"
    assert config["build"]["python_requirements"] == "requirements/tts.txt"
    assert json.loads(labels["run.cog.openapi_schema"]) == schema
    freeze = labels["run.cog.pip_freeze"].lower().splitlines()
    assert "piper-tts==1.8.0" in freeze and "coglet==0.23.1" in freeze
    assert not any(line.startswith(("torch==", "transformers==", "diffusers==")) for line in freeze), freeze
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if head:
        assert labels["org.opencontainers.image.revision"] == head

    inside = json.loads(in_image(engine, tts_image, """
import importlib.util, json, os, shutil
print(json.dumps({
  "schema": json.load(open("/src/.cog/openapi_schema.json")),
  "weights": sorted(os.listdir("/src/weights")),
  "torch": importlib.util.find_spec("torch") is not None,
  "tests": os.path.exists("/src/tests"),
  "tini": shutil.which("tini"),
  "stub": os.environ.get("COG_PREDICT_TYPE_STUB"),
}))"""))
    assert inside["schema"] == schema
    assert inside["weights"] == ["tts"]  # not the other models' weights
    assert inside["torch"] is False and inside["tests"] is False
    assert inside["tini"] and inside["stub"] == "predict.py:TTSRunner"
    config = json.loads(subprocess.run(engine.cmd("image", "inspect", "--format", "{{json .Config}}", tts_image),
                                       capture_output=True, text=True).stdout)
    assert config["Entrypoint"] == ["tini", "--"] and "5000/tcp" in config["ExposedPorts"]


def test_predict_in_the_container_gives_the_same_bytes_and_errors(tts_image, real_tts_weights, tmp_path):
    env = {"COGKIT_WEIGHTS_DIR": str(real_tts_weights.parent)}
    args = ["predict", "tts", "-i", f"text={FOX}", "-i", "variation=0"]
    outside = cogkit(*args, "-o", str(tmp_path / "local.wav"), env=env)
    inside = cogkit(*args, "-o", str(tmp_path / "container.wav"), "--container", "--image", tts_image, env=env)
    assert outside.returncode == 0, outside.stderr
    assert inside.returncode == 0, inside.stderr
    assert "tts ready in" in inside.stderr
    assert (tmp_path / "container.wav").read_bytes() == (tmp_path / "local.wav").read_bytes()

    # A fresh container's first boot uses the snapshot the build recorded inside the image.
    if compose("tts", ROOT).snapshot:
        from cogkit.container import ContainerServer

        with ContainerServer(tts_image, "predict.py:TTSRunner") as server:
            server.start().wait_ready()
            log = "\n".join(server.setup_log_lines())
        assert "snapshot: restored /src/weights/tts/snapshot/" in log, log
        assert "snapshot: saved" not in log

    bad = ["predict", "tts", "-i", f"text={FOX}", "-i", "speed=10"]
    outside = cogkit(*bad, env=env)
    inside = cogkit(*bad, "--container", "--image", tts_image, env=env)
    assert outside.returncode == inside.returncode == 1
    assert "speed" in inside.stderr and "Traceback" not in inside.stderr
    assert outside.stderr.splitlines()[-1] == inside.stderr.splitlines()[-1]


def test_a_code_change_rebuilds_the_code_layers_only(engine, base_image, tts_image, real_tts_weights, tmp_path,
                                                     monkeypatch):
    from cogkit.image_build import build

    root = project_copy(tmp_path)
    monkeypatch.setenv("COGKIT_WEIGHTS_DIR", str(real_tts_weights.parent))
    with open(root / "predict.py", "a") as f:
        f.write("\n# a code change\n")
    lines: list[str] = []
    result = build("tts", tag=f"{TAG}-changed", base=base_image, root=root, log=lines.append)
    try:
        text = "\n".join(lines)
        steps = text.split("Step ")
        deps = next(s for s in steps if "pip install" in s and "-r /tmp/requirements.txt" in s)
        weights = next(s for s in steps if s.split(" : ", 1)[-1].startswith("COPY weights"))
        code = next(s for s in steps if s.split(" : ", 1)[-1].startswith("COPY src"))
        assert "Using cache" in deps and "Using cache" in weights  # dependencies and weights kept
        assert "Using cache" not in code  # the changed code is copied again
        assert result.image_id != subprocess.run(engine.cmd("image", "inspect", "--format", "{{.Id}}", tts_image),
                                                 capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run(engine.cmd("rmi", "--force", f"{TAG}-changed"), capture_output=True)


def test_push_without_cog_to_a_local_registry_keeps_labels_and_schema(engine, base_image, tts_image,
                                                                      real_tts_weights, local_registry, tmp_path):
    import shutil

    if shutil.which("skopeo") is None:
        pytest.skip("skopeo reads the pushed image back: apt-get install skopeo (CI's .ci/run does)")
    from cogkit.image_build import image_labels

    root = project_copy(tmp_path)
    dest = f"{local_registry}/acme/tts"
    env = {"COGKIT_SHIP_ROOT": str(root), "COGKIT_WEIGHTS_DIR": str(real_tts_weights.parent),
           "COGKIT_BASE_IMAGE": base_image, "REPLICATE_API_TOKEN": ""}
    dry = cogkit("push", "tts", "r8.im/acme/tts", "--dry-run", "--without-cog", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"cogkit build tts --tag r8.im/acme/tts --engine {engine.name}" in dry.stdout
    assert f"{engine.name} push r8.im/acme/tts" in dry.stdout

    res = cogkit("push", "tts", dest, "--without-cog", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"tts: pushed to {dest}" in res.stderr
    try:
        remote = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{dest}"],
                                           capture_output=True, text=True, check=True).stdout)
        local = image_labels(dest)
        assert remote["Labels"] == local
        assert json.loads(remote["Labels"]["run.cog.openapi_schema"]) == \
            openapi_schema(load_predictor_info("predict.py:TTSRunner", ROOT))
        # The registry holds this very image, so its /src/.cog/openapi_schema.json too.
        manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{dest}"],
                                             capture_output=True, text=True, check=True).stdout)
        image_id = subprocess.run(engine.cmd("image", "inspect", "--format", "{{.Id}}", dest),
                                  capture_output=True, text=True).stdout.strip()
        assert manifest["config"]["digest"] == image_id
        lock = json.loads((root / "models" / "locks" / "tts.schema.json").read_text())
        assert lock["image"] == dest and lock["version"] is None
    finally:
        subprocess.run(engine.cmd("rmi", "--force", dest), capture_output=True)
