"""`cogkit call` end to end against a real `cogkit gateway` (the same code path as against Replicate)."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from cogkit.cli import main
from cogkit.replicate_api import HARDWARE_PRICES, cost_line, parse_ref
from cogkit.weights import project_root
from models import MODELS
from tests.fixtures_gateway import GatewayProcess
from tests.test_gateway import LONG, wait_processing_with_output, wait_until


@pytest.fixture
def api_env(gateway, monkeypatch):
    for key, value in gateway.client_env().items():
        monkeypatch.setenv(key, value)
    return gateway


def reference_text(gateway, seed: int) -> str:
    return "".join(gateway.client().run("local/llm", input={"prompt": "Hi", "max_new_tokens": 12, "seed": seed}))


def test_call_streams_text_and_prints_the_cost(api_env):
    env = {**os.environ}
    proc = subprocess.run([sys.executable, "-m", "cogkit.cli", "call", "local/llm", "-i", "prompt=Hi",
                           "-i", "max_new_tokens=12", "-i", "seed=5", "--stream"],
                          cwd=project_root(), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = reference_text(api_env, 5).replace("\r\n", "\n").replace("\r", "\n")
    assert proc.stdout == expected + "\n"
    hardware = MODELS["llm"].hardware  # the gateway says which hardware the model is meant for
    assert f"on {hardware} × ${HARDWARE_PRICES[hardware]:.6f}/s ≈ $" in proc.stderr


def test_call_json_with_wait(api_env, capsys):
    assert main(["call", "local/llm", "-i", "prompt=Hi", "-i", "max_new_tokens=12", "-i", "seed=6",
                 "--wait", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "succeeded" and result["model"] == "local/llm"
    assert "".join(result["output"]) == reference_text(api_env, 6)
    assert result["metrics"]["predict_time"] > 0


def test_call_bad_input_exits_nonzero_naming_the_field(api_env, capsys):
    assert main(["call", "local/llm", "-i", "prompt=Hi", "-i", "max_new_tokens=0"]) == 1
    assert "max_new_tokens" in capsys.readouterr().err
    assert main(["call", "local/llm", "-i", "nosuch=1"]) == 2
    assert "unknown input 'nosuch'" in capsys.readouterr().err
    assert main(["call", "local/nosuch", "-i", "prompt=Hi"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_call_without_a_token_or_with_a_bad_ref(monkeypatch, capsys):
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    assert main(["call", "local/llm", "-i", "prompt=Hi"]) == 2
    assert "REPLICATE_API_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("REPLICATE_API_TOKEN", "x")
    assert main(["call", "llm", "-i", "prompt=Hi"]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err


def test_call_reports_an_aborted_prediction(tmp_path, gateway_weights_root, gateway_cert, monkeypatch, capsys):
    """Cancel-After passing while the prediction waits in the queue gives status `aborted`, which
    the replicate client cannot parse (not even in a listing, so this runs on a gateway of its
    own); `cogkit call` reports it and exits non-zero."""
    # One prediction at a time, so that the second one waits in the queue behind the blocker (the llm
    # overlay's concurrency would run it at once).
    gateway = GatewayProcess(tmp_path / "data", gateway_weights_root, gateway_cert,
                             env={"COG_MAX_CONCURRENCY": "1"}).start()
    for key, value in gateway.client_env().items():
        monkeypatch.setenv(key, value)
    client = gateway.client()
    blocker = client.models.predictions.create(model="local/llm", input=LONG)
    wait_processing_with_output(client, blocker)
    try:
        # The blocker has ~0.4 s of its ~1.7k tokens left on a fast machine (a 0.5 s deadline let it
        # finish first there, and the queued one then ran).
        code = main(["call", "local/llm", "-i", "prompt=Hi", "--cancel-after", "0.1s", "--json"])
    finally:
        blocker.cancel()
        gateway.stop()
    captured = capsys.readouterr()
    assert code == 1
    assert "prediction aborted" in captured.err and "Cancel-After" in captured.err
    assert json.loads(captured.out)["status"] == "aborted"


def test_call_failed_prediction_exits_nonzero(api_env, capsys):
    client = api_env.client()
    result = {}

    def call():
        result["code"] = main(["call", "local/llm", "-i", "prompt=Hi", "-i", "max_new_tokens=8192",
                               "-i", "temperature=5", "-i", "top_k=0", "-i", "top_p=1", "-i", f"seed={LONG['seed']}"])

    thread = threading.Thread(target=call)
    thread.start()
    running = None
    deadline = time.monotonic() + 60
    while running is None and time.monotonic() < deadline:
        running = next((p for p in client.predictions.list().results
                        if p.status == "processing" and p.input.get("seed") == LONG["seed"]), None)
        time.sleep(0.05)
    assert running is not None
    wait_processing_with_output(client, running)
    client.predictions.cancel(running.id)
    thread.join(timeout=60)
    assert result["code"] == 1
    assert "prediction canceled" in capsys.readouterr().err


def test_ref_parsing_and_cost():
    assert parse_ref("local/llm") == ("local", "llm", None)
    assert parse_ref("a/b:123") == ("a", "b", "123")
    assert cost_line({"metrics": {"predict_time": 2.0}}, "gpu-l40s").endswith("≈ $0.001950")
    assert "unknown" in cost_line({"metrics": {"predict_time": 2.0}}, None)
    assert cost_line({"metrics": {}}, "cpu") is None


def test_call_by_version_with_a_webhook(api_env, webhook_receiver, capsys):
    version = api_env.client().models.get("local/llm").latest_version.id
    assert main(["call", f"local/llm:{version}", "-i", "prompt=Hi", "-i", "max_new_tokens=4", "--json",
                 "--webhook", webhook_receiver.url, "--webhook-events", "completed"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == version
    deliveries = wait_until(lambda: webhook_receiver.for_prediction(result["id"]), timeout=30,
                            what="the completed webhook")
    time.sleep(0.3)  # nothing else may follow: only `completed` was asked for
    payloads = [json.loads(body) for _, body in webhook_receiver.for_prediction(result["id"])]
    assert len(deliveries) >= 1 and [p["status"] for p in payloads] == ["succeeded"]
