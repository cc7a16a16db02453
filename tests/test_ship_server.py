"""Shipping checks that boot the real Cog server: example predictions, `cogkit push --dry-run`, and the
push path up to the Cog CLI."""

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from cogkit.schema import load_predictor_info, openapi_schema
from cogkit.ship.commands import run_checks
from cogkit.ship.examples import run_examples
from models import MODELS
from tests.conftest import ROOT
from tests.test_ship import LLM_OVERLAY, make_scratch_root

VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"


def cogkit(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "cogkit.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_examples_pass_fail_and_bad_input_through_the_real_server(tiny_weights_root):
    results = run_examples("predict.py:LLMRunner", [
        {"name": "any text", "input": {"prompt": "Hello", "max_new_tokens": 4, "temperature": 0},
         "expect": {"regex": r"\S"}},
        {"name": "random weights know no capitals", "input": {"prompt": "Capital of France?",
                                                              "max_new_tokens": 4, "temperature": 0},
         "expect": {"contains": "Paris"}},
        {"name": "out of bounds", "input": {"prompt": "Hi", "max_new_tokens": 0}, "expect": {"regex": "."}},
    ], ROOT, env={"COGKIT_WEIGHTS_DIR": str(tiny_weights_root)}, setup_timeout=120)
    assert [(r.name, r.ok) for r in results] == [
        ("any text", True), ("random weights know no capitals", False), ("out of bounds", False)]
    assert "does not contain 'Paris'" in results[1].detail
    assert "max_new_tokens" in results[2].detail and "minimum of 1" in results[2].detail


# The session fixture holding each model's default weights (a weights root, or a model's folder in one).
WEIGHTS_FIXTURES = {"llm": "real_llm_weights", "image": "image_weights_root",
                    "whisper": "real_whisper_weights", "tts": "real_tts_weights"}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_declared_examples_pass_on_the_default_weights(model, request, monkeypatch):
    assert model in WEIGHTS_FIXTURES, f"add the session fixture with {model}'s weights to WEIGHTS_FIXTURES"
    weights = request.getfixturevalue(WEIGHTS_FIXTURES[model])
    monkeypatch.setenv("COGKIT_WEIGHTS_DIR", str(weights.parent if weights.name == model else weights))
    run = run_checks(model, ROOT)
    by_name = {c.name: c for c in run.checks}
    assert by_name["examples"].ok, by_name["examples"].lines
    assert len(by_name["examples"].lines) == len(run.selection.examples)
    assert run.ok, [(c.name, c.lines) for c in run.checks if not c.ok]


class FakeReplicate(BaseHTTPRequestHandler):
    """Answers `GET /v1/models/acme/tiny` like Replicate's API, only with the right token."""

    def do_GET(self):
        ok = self.path == "/v1/models/acme/tiny" and self.headers.get("Authorization") == "Bearer test-token"
        body = json.dumps({"owner": "acme", "name": "tiny", "latest_version": {"id": VERSION}} if ok
                          else {"title": "not found", "status": 404}).encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_replicate():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeReplicate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fake_tools(bin_dir, cog_exit=0):
    """Stand-ins for the Cog CLI and Docker, which cannot be installed here: they only let this test
    check the exact command line `cogkit push` runs, the files it runs with, and the lock it records."""
    bin_dir.mkdir()
    (bin_dir / "cog").write_text(f"""#!/bin/sh
{{ echo "argv: $*"; echo "cwd: $(pwd)"; echo "--- cog.yaml"; cat cog.yaml; echo "--- .dockerignore"; \
cat .dockerignore; }} > "$FAKE_COG_RECORD"
echo "Image '$2' pushed"
exit {cog_exit}
""")
    (bin_dir / "docker").write_text('#!/bin/sh\n[ "$1" = info ] && exit 0\nexit 1\n')
    for tool in ("cog", "docker"):
        (bin_dir / tool).chmod(0o755)


def test_push_dry_run_then_push_records_the_lock(tmp_path, tiny_weights_root, fake_replicate):
    root = make_scratch_root(tmp_path, {"llm": LLM_OVERLAY})
    record = tmp_path / "cog-call.txt"
    env = {"COGKIT_SHIP_ROOT": str(root), "COGKIT_WEIGHTS_DIR": str(tiny_weights_root),
           "FAKE_COG_RECORD": str(record), "REPLICATE_API_TOKEN": "test-token",
           "REPLICATE_BASE_URL": fake_replicate}

    # Without the Cog CLI: `cogkit build` and a registry push (engine or not, a dry run shows them).
    res = cogkit("push", "llm", "r8.im/acme/tiny", "--dry-run", "--without-cog", env=env)
    assert res.returncode == 0, res.stderr
    for number, name in enumerate(["schema", "compat", "weights", "examples", "snapshot"], 1):
        assert f"llm check {number} {name:<9} ok" in res.stderr, res.stderr
    assert f"cd {root} && cogkit build llm --tag r8.im/acme/tiny" in res.stdout
    assert re.search(r"^(docker|podman) push r8\.im/acme/tiny$", res.stdout, re.M), res.stdout

    fake_tools(tmp_path / "bin")
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"
    res = cogkit("push", "llm", "r8.im/acme/tiny", "--dry-run", env=env)
    assert res.returncode == 0, res.stderr
    assert f"cd {root} && cog push r8.im/acme/tiny" in res.stdout
    assert "#    run: predict.py:LLMRunner" in res.stdout
    assert not record.exists() and not (root / "cog.yaml").exists()
    assert not (root / "models" / "locks" / "llm.schema.json").exists()

    dockerignore_before = (root / ".dockerignore").read_text()
    res = cogkit("push", "llm", "r8.im/acme/tiny", env=env)
    assert res.returncode == 0, res.stderr
    call = record.read_text()
    assert call.startswith(f"argv: push r8.im/acme/tiny\ncwd: {root}\n")
    cog_yaml = yaml.safe_load(call.split("--- cog.yaml\n")[1].split("--- .dockerignore\n")[0])
    assert cog_yaml == {"build": {"python_version": "3.11", "python_requirements": "requirements.txt",
                                  "gpu": True}, "run": "predict.py:LLMRunner",
                        "environment": ["COGKIT_MODEL=llm"]}
    ignored = call.split("--- .dockerignore\n")[1]
    assert ignored.startswith(dockerignore_before)
    assert all(f"weights/{m}\n" in ignored for m in MODELS if m != "llm")
    assert "weights/llm\n" not in ignored
    # the tree is as it was, except for the new lock
    assert not (root / "cog.yaml").exists() and (root / ".dockerignore").read_text() == dockerignore_before
    lock = json.loads((root / "models" / "locks" / "llm.schema.json").read_text())
    assert lock["image"] == "r8.im/acme/tiny" and lock["version"] == VERSION
    assert lock["schema"] == openapi_schema(load_predictor_info("predict.py:LLMRunner", ROOT))
    assert f"version {VERSION}" in res.stderr


def test_a_failed_cog_push_leaves_the_lock_alone(tmp_path, tiny_weights_root):
    root = make_scratch_root(tmp_path, {"llm": LLM_OVERLAY})
    fake_tools(tmp_path / "bin", cog_exit=3)
    env = {"COGKIT_SHIP_ROOT": str(root), "COGKIT_WEIGHTS_DIR": str(tiny_weights_root),
           "FAKE_COG_RECORD": str(tmp_path / "cog-call.txt"),
           "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    res = cogkit("push", "llm", "r8.im/acme/tiny", env=env)
    assert res.returncode == 1
    assert "`cog push r8.im/acme/tiny` failed with exit code 3" in res.stderr
    assert not (root / "models" / "locks" / "llm.schema.json").exists()
    assert not (root / "cog.yaml").exists()


def test_push_with_allow_breaking_records_the_reason_in_the_lock(tmp_path, tiny_weights_root):
    root = make_scratch_root(tmp_path, {"llm": LLM_OVERLAY})
    schema = openapi_schema(load_predictor_info("predict.py:LLMRunner", ROOT))
    old = json.loads(json.dumps(schema))
    old["components"]["schemas"]["Input"]["properties"]["max_new_tokens"]["maximum"] = 16384
    lock_file = root / "models" / "locks" / "llm.schema.json"
    lock_file.write_text(json.dumps({"model": "llm", "image": "r8.im/acme/tiny", "version": "v1", "schema": old}))
    fake_tools(tmp_path / "bin")
    record = tmp_path / "cog-call.txt"
    env = {"COGKIT_SHIP_ROOT": str(root), "COGKIT_WEIGHTS_DIR": str(tiny_weights_root),
           "FAKE_COG_RECORD": str(record), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env["REPLICATE_API_TOKEN"] = ""  # no token: the version is not looked up
    res = cogkit("push", "llm", "r8.im/acme/tiny", "--allow-breaking", "8192 is the model's context", env=env)
    assert res.returncode == 0, res.stderr
    assert record.read_text().startswith("argv: push r8.im/acme/tiny\n")
    assert "REPLICATE_API_TOKEN is not set" in res.stderr
    lock = json.loads(lock_file.read_text())
    assert lock["version"] is None and lock["schema"] == schema
    [allowed] = lock["allowed_breaking"]
    assert allowed["reason"] == "8192 is the model's context" and allowed["from_version"] == "v1"
    assert allowed["changes"] == ["tightened bound: max_new_tokens: maximum 16384 -> 8192"]
