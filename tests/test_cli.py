"""`cogkit` as a user runs it: a subprocess, the real server, the tiny model."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from cogkit.server import free_port, parse_sse
from tests.conftest import ROOT


def cogkit(*args, weights=None, timeout=180):
    env = {**os.environ, **({"COGKIT_WEIGHTS_DIR": str(weights)} if weights else {})}
    return subprocess.run([sys.executable, "-m", "cogkit.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_predict_streams_text_and_json_has_output_status_metrics(tiny_weights_root):
    res = cogkit("predict", "llm", "-i", "prompt=Hello there", "-i", "max_new_tokens=8", "-i", "seed=1",
                 "--json", weights=tiny_weights_root)
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["status"] == "succeeded"
    assert isinstance(body["output"], str) and body["output"]
    assert body["metrics"]["output_token_count"] >= 1
    assert "ready in" in res.stderr


def test_predict_prints_the_text(tiny_weights_root):
    res = cogkit("predict", "llm", "-i", "prompt=Hello", "-i", "max_new_tokens=6", "-i", "temperature=0",
                 weights=tiny_weights_root)
    as_json = cogkit("predict", "llm", "-i", "prompt=Hello", "-i", "max_new_tokens=6", "-i",
                     "temperature=0", "--json", weights=tiny_weights_root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == json.loads(as_json.stdout)["output"].strip()


def test_bad_bound_exits_nonzero_naming_the_field(tiny_weights_root):
    res = cogkit("predict", "llm", "-i", "prompt=hi", "-i", "max_new_tokens=0", weights=tiny_weights_root)
    assert res.returncode != 0
    assert "max_new_tokens" in res.stderr and "minimum of 1" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args, message", [
    (["predict", "nosuchmodel", "-i", "prompt=hi"], "unknown model 'nosuchmodel'"),
    (["predict", "llm"], "missing required input 'prompt'"),
    (["predict", "llm", "-i", "prompt"], "malformed input 'prompt'"),
    (["predict", "llm", "-i", "prompt=hi", "-i", "colour=red"], "unknown input 'colour'"),
    (["predict", "llm", "-i", "prompt=hi", "-i", "max_new_tokens=lots"], "'lots' is not a valid integer"),
])
def test_usage_errors_are_one_line(args, message, tiny_weights_root):
    res = cogkit(*args, weights=tiny_weights_root, timeout=60)
    assert res.returncode == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_missing_weights_say_how_to_build_them(tmp_path):
    res = cogkit("predict", "llm", "-i", "prompt=hi", weights=tmp_path)
    assert res.returncode == 1
    assert "cogkit build-weights llm" in res.stderr


def test_serve_answers_curl_style_sse_and_cancel(tiny_weights_root):
    port = free_port()
    env = {**os.environ, "COGKIT_WEIGHTS_DIR": str(tiny_weights_root)}
    # Ctrl-C as a terminal sends it: a shell that runs this suite in the background (`make test &`)
    # passes SIGINT down ignored, which would make the server deaf to it.
    proc = subprocess.Popen([sys.executable, "-m", "cogkit.cli", "serve", "llm", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health-check", timeout=1).json()["status"] == "READY":
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        with requests.post(f"{url}/predictions", stream=True, headers={"Accept": "text/event-stream"},
                           json={"input": {"prompt": "hi", "max_new_tokens": 20, "seed": 2}}) as resp:
            resp.encoding = "utf-8"
            kinds = [event for event, _ in parse_sse(resp.iter_lines(decode_unicode=True))]
        assert kinds.count("output") >= 3 and kinds[-1] == "completed"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    # Stopping `cogkit serve` stops the server it started.
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health-check", timeout=1)
