"""`cogkit gateway` with the unmodified `replicate` client, over HTTPS on 127.0.0.1, tiny models."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput
from replicate.pagination import paginate
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from cogkit.webhooks import InvalidWebhook, verify_webhook
from tests.fixtures_gateway import TOKEN, GatewayProcess

# With the tiny model (random weights, seed 0) this seed samples ~1700 tokens before its end-of-text
# token: several seconds of output to cancel or crash in the middle of.
LONG = {"prompt": "Tell me a long story", "max_new_tokens": 8192, "temperature": 5.0, "top_k": 0, "top_p": 1.0,
        "seed": 26}


def short(seed=1, tokens=8):
    return {"prompt": "Hello there", "max_new_tokens": tokens, "seed": seed, "temperature": 1.0}


def wait_until(condition, timeout=60, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_processing_with_output(client, prediction):
    def ready():
        prediction.reload()
        return prediction.status == "processing" and len(prediction.output or []) >= 3
    wait_until(ready, what="the prediction to produce output")


# ---------------------------------------------------------------- the client's main calls


def test_run_returns_the_generated_text(gateway_client):
    output = gateway_client.run("local/llm", input=short(seed=7))
    assert isinstance(output, list) and output and all(isinstance(t, str) for t in output)
    again = gateway_client.run("local/llm", input=short(seed=7))
    assert "".join(again) == "".join(output)  # same seed, same text


def test_run_with_version_id_yields_an_iterator(gateway_client):
    model = gateway_client.models.get("local/llm")
    version = model.latest_version.id
    assert len(version) == 64
    output = gateway_client.run(f"local/llm:{version}", input=short(seed=7))
    assert "".join(output) == "".join(gateway_client.run("local/llm", input=short(seed=7)))


def test_stream_yields_tokens_as_they_come(gateway_client):
    events = list(gateway_client.stream("local/llm", input=short(seed=3, tokens=40)))
    kinds = [e.event.value for e in events]
    assert kinds[-1] == "done"
    chunks = [str(e) for e in events if e.event.value == "output"]
    assert len(chunks) >= 5
    assert [int(e.id) for e in events] == sorted(int(e.id) for e in events)  # every event has an id
    final = gateway_client.predictions.list().results
    # SSE carries a CR inside a token as a line break, as the protocol has it
    as_sse = lambda text: text.replace("\r\n", "\n").replace("\r", "\n")  # noqa: E731
    match = next(p for p in final if as_sse("".join(p.output or [])) == "".join(chunks))
    assert match.status == "succeeded"


def test_create_and_wait(gateway_client):
    prediction = gateway_client.predictions.create(model="local/llm", input=short(seed=2))
    assert prediction.status in ("starting", "processing", "succeeded")
    assert prediction.urls["stream"].startswith(gateway_client._base_url)
    prediction.wait()
    assert prediction.status == "succeeded"
    assert prediction.output and prediction.metrics["predict_time"] > 0
    assert prediction.metrics["output_token_count"] >= 1
    assert "seed: 2" in prediction.logs
    assert prediction.started_at and prediction.completed_at


def test_create_by_version_with_prefer_wait(gateway_client):
    version = gateway_client.models.get("local/llm").latest_version.id
    prediction = gateway_client.predictions.create(version=version, input=short(seed=4), wait=30)
    assert prediction.status == "succeeded"  # answered synchronously
    assert prediction.version == version and prediction.model == "local/llm"


def test_cancel_a_running_prediction(gateway_client):
    prediction = gateway_client.predictions.create(model="local/llm", input=LONG)
    wait_processing_with_output(gateway_client, prediction)
    prediction.cancel()
    prediction.wait()
    assert prediction.status == "canceled"
    assert prediction.output and len(prediction.output) < 8192  # stopped early, partial output kept
    # the model is free again
    assert gateway_client.run("local/llm", input=short())


def test_cancel_after_cancels_a_running_prediction(gateway):
    def post(inputs, **headers):
        return requests.post(f"{gateway.url}/v1/models/local/llm/predictions", json={"input": inputs},
                             headers={"Authorization": f"Bearer {TOKEN}", **headers}, verify=gateway.verify)

    # The model's server up first: a deadline that passes before a prediction starts aborts it instead.
    assert post(short(), Prefer="wait").json()["status"] == "succeeded"
    # LONG runs ~1.7k tokens of the tiny model: ~0.5 s on onnxruntime's graph on a fast machine
    # (a 0.5 s deadline let it finish there), ~1.4 s on a slower one.
    resp = post(LONG, **{"Cancel-After": "0.1s"})
    assert resp.status_code == 201
    record = wait_until(lambda: (r := gateway.get(f"/v1/predictions/{resp.json()['id']}").json())["status"]
                        in ("canceled", "failed", "succeeded", "aborted") and r, what="auto-cancel")
    assert record["status"] == "canceled"
    assert 0.1 <= record["metrics"]["total_time"] < 30


def test_list_predictions_pages_with_full_next_urls(gateway_client):
    ids = {gateway_client.predictions.create(model="local/llm", input=short(tokens=2)).id for _ in range(3)}
    page = gateway_client.predictions.list()
    assert page.next is None or page.next.startswith(f"{gateway_client._base_url}/v1/predictions?cursor=")
    assert ids <= {p.id for p in page.results}
    dates = [p.created_at for p in page.results]
    assert dates == sorted(dates, reverse=True)


# ---------------------------------------------------------------- errors, auth, files


def test_bad_input_is_422_problem_naming_the_field(gateway):
    resp = requests.post(f"{gateway.url}/v1/models/local/llm/predictions",
                         json={"input": {"prompt": "hi", "max_new_tokens": 0}},
                         headers={"Authorization": f"Bearer {TOKEN}"}, verify=gateway.verify)
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert "max_new_tokens" in resp.json()["detail"] and "minimum of 1" in resp.json()["detail"]
    with pytest.raises(ReplicateError, match="prompt"):
        gateway.client().run("local/llm", input={"max_new_tokens": 3})


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic " + TOKEN])
def test_requests_without_a_valid_token_get_401_problem(gateway, auth):
    resp = requests.get(f"{gateway.url}/v1/predictions", headers={"Authorization": auth} if auth else {},
                        verify=gateway.verify)
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["status"] == 401 and resp.json()["title"]


@pytest.mark.parametrize("path, status", [("/v1/predictions/nosuchid", 404), ("/v1/models/local/nosuch", 404),
                                          ("/v1/models/someone/llm", 404), ("/v1/nothing", 404)])
def test_unknown_things_are_404_problem(gateway, path, status):
    resp = gateway.get(path)
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["detail"]


def test_files_upload_and_signed_download(gateway, gateway_client, tmp_path):
    (tmp_path / "note.txt").write_text("hello gateway")
    with open(tmp_path / "note.txt", "rb") as f:
        uploaded = gateway_client.files.create(f)
    assert uploaded.size == 13 and uploaded.content_type == "text/plain"
    url = uploaded.urls["get"]
    # signed: no token needed; a tampered signature is refused
    assert requests.get(url, verify=gateway.verify).content == b"hello gateway"
    assert requests.get(url.replace("signature=", "signature=x"), verify=gateway.verify).status_code == 403
    assert FileOutput(url, gateway_client).read() == b"hello gateway"


def test_the_model_describes_itself(gateway_client):
    model = gateway_client.models.get("local/llm")
    schema = model.latest_version.openapi_schema
    assert schema["components"]["schemas"]["Input"]["properties"]["prompt"]["type"] == "string"
    assert model.owner == "local" and model.name == "llm"


# ---------------------------------------------------------------- webhooks


def test_webhooks_are_signed_and_verify(gateway_client, webhook_receiver):
    secret = gateway_client.webhooks.default.secret().key
    assert secret.startswith("whsec_")
    webhook_receiver.fail_terminal = 1  # the first `completed` delivery fails: it must be retried
    prediction = gateway_client.predictions.create(
        model="local/llm", input=short(seed=3, tokens=30), webhook=webhook_receiver.url,
        webhook_events_filter=["start", "output", "completed"])
    prediction.wait()
    assert len(prediction.output) >= 5
    deliveries = wait_until(lambda: (d := webhook_receiver.for_prediction(prediction.id)) and
                            sum(json.loads(b)["status"] == "succeeded" for _, b in d) >= 2 and d,
                            timeout=30, what="the retried completed webhook")
    verifier = Webhook(secret)
    payloads = [verifier.verify(body, headers) for headers, body in deliveries]
    statuses = [p["status"] for p in payloads]
    assert statuses[0] == "processing" and not payloads[0]["output"]  # start
    assert any(p["status"] == "processing" and p["output"] for p in payloads)  # output
    completed = [(h, p) for (h, _), p in zip(deliveries, payloads) if p["status"] == "succeeded"]
    assert completed[0][0]["webhook-id"] == completed[1][0]["webhook-id"]  # a retry, not a new event
    assert completed[-1][1]["output"] == prediction.output
    assert not any(p["logs"] and p["status"] == "processing" and not p["output"] for p in payloads[1:])
    # our helper agrees, and a forged webhook fails both
    headers, body = deliveries[-1]
    assert verify_webhook(body, headers, secret)["id"] == prediction.id
    forged = body.replace(b'"succeeded"', b'"failed"')
    with pytest.raises(WebhookVerificationError):
        verifier.verify(forged, headers)
    with pytest.raises(InvalidWebhook, match="signature"):
        verify_webhook(forged, headers, secret)
    other = Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    with pytest.raises(WebhookVerificationError):
        other.verify(body, headers)
    with pytest.raises(InvalidWebhook, match="old"):
        verify_webhook(body, headers, secret, now=time.time() + 3600)


# ---------------------------------------------------------------- crashes and restarts


def child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            children.append(int(stat.parent.name))
    return children


@pytest.mark.parametrize("victim", ["server", "python worker"])
def test_killed_worker_fails_the_prediction_and_the_next_succeeds(gateway, gateway_client, victim):
    prediction = gateway_client.predictions.create(model="local/llm", input=LONG)
    wait_processing_with_output(gateway_client, prediction)
    worker = gateway.workers()["llm"]
    if victim == "server":  # coglet and its worker together
        os.killpg(worker["pid"], signal.SIGKILL)
    else:  # only the Python process running the predictor (as the OOM killer would): coglet stays up
        os.kill(child_pids(worker["pid"])[0], signal.SIGKILL)
    prediction.wait()
    assert prediction.status == "failed"
    assert "crashed" in prediction.error and "restarts" in prediction.error
    assert gateway_client.run("local/llm", input=short())
    after = gateway.workers()["llm"]
    assert after["pid"] != worker["pid"] and after["restarts"] == worker["restarts"] + 1


def test_restart_keeps_history_and_fails_interrupted(tmp_path, gateway_weights_root):
    # one prediction at a time, so that one waits in the queue while another runs
    gw = GatewayProcess(tmp_path / "data", gateway_weights_root, None, page_size=2,
                        extra_args=("--max-queue", "1"), env={"COG_MAX_CONCURRENCY": "1"}).start()
    try:
        client = gw.client()
        done = [client.models.predictions.create(model="local/llm", input=short(seed=s), wait=30) for s in (1, 2, 3)]
        assert all(p.status == "succeeded" for p in done)
        running = client.predictions.create(model="local/llm", input=LONG)
        wait_processing_with_output(client, running)
        queued = client.predictions.create(model="local/llm", input=short())
        with pytest.raises(ReplicateError) as refused:  # --max-queue 1: one waits, the next is refused
            client.predictions.create(model="local/llm", input=short())
        assert refused.value.status == 429 and "queued" in refused.value.detail
        # a crash: no chance to record anything; the model server and its worker die with it
        assert gw.stop(signal.SIGKILL) == []
        gw.start()
        client = gw.client()
        for before in done:
            after = client.predictions.get(before.id)
            assert (after.status, after.output, after.metrics) == (before.status, before.output, before.metrics)
        for unfinished, was in ((running, "processing"), (queued, "starting")):
            after = client.predictions.get(unfinished.id)
            assert after.status == "failed" and "interrupted" in after.error and f"it was {was}" in after.error
        listed = [p.id for page in paginate(client.predictions.list) for p in page]
        assert listed == [queued.id, running.id] + [p.id for p in reversed(done)]  # 2 per page: 3 pages
        first = client.predictions.list()
        second = client.predictions.list(first.next)
        assert first.previous is None and second.next
        assert client.predictions.list(second.previous).results == first.results  # and back again
    finally:
        gw.stop()


def test_cancel_a_queued_prediction(gateway, gateway_client):
    # fill every slot of the model's server (its concurrency), so that the next one waits
    slots = gateway.workers()["llm"]["concurrency"]
    running = [gateway_client.predictions.create(model="local/llm", input=LONG) for _ in range(slots)]
    queued = gateway_client.predictions.create(model="local/llm", input=short())
    for prediction in running:
        wait_processing_with_output(gateway_client, prediction)
    # all of them on the server at once, the extra one waiting in the gateway's queue
    worker = gateway.workers()["llm"]
    assert set(worker["predictions"]) == {p.id for p in running} and worker["queued"] == 1
    queued.cancel()
    assert queued.status == "canceled" and queued.started_at is None and not queued.output
    for prediction in running:
        prediction.cancel()
    for prediction in running:
        prediction.wait()
        assert prediction.status == "canceled"
    queued.reload()
    assert queued.status == "canceled"  # the worker skipped it


def test_stream_replays_and_resumes_with_last_event_id(gateway, gateway_client):
    prediction = gateway_client.models.predictions.create(model="local/llm", input=short(seed=3, tokens=20), wait=30)
    assert prediction.status == "succeeded"

    def events(**headers):
        resp = requests.get(prediction.urls["stream"], headers={"Authorization": f"Bearer {TOKEN}",
                                                                "Accept": "text/event-stream", **headers},
                            verify=gateway.verify, timeout=30)
        assert resp.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in resp.text.split("\n\n") if b.strip()]
        return [dict(line.split(": ", 1) for line in b.split("\n") if ": " in line) for b in blocks]

    everything = events()
    assert everything[-1] == {"event": "done", "id": str(len(everything) - 1), "data": "{}"}
    assert [int(e["id"]) for e in everything] == list(range(len(everything)))
    assert events(**{"Last-Event-ID": "2"}) == everything[3:]


def test_a_model_that_cannot_start_fails_its_predictions_clearly(tmp_path):
    gw = GatewayProcess(tmp_path / "data", tmp_path / "no-weights", None).start()
    try:
        prediction = gw.client().models.predictions.create(model="local/llm", input=short(), wait=60)
        assert prediction.status == "failed"
        assert "the llm model failed to start" in prediction.error and "setup failed" in prediction.error
    finally:
        gw.stop()


def test_tokens_come_from_config_or_are_made(tmp_path, monkeypatch):
    from cogkit.gateway import load_tokens

    monkeypatch.delenv("COGKIT_GATEWAY_TOKENS", raising=False)
    config = tmp_path / "config.toml"
    tokens, made = load_tokens(config, [])
    assert tokens == [made] and made in config.read_text()
    assert load_tokens(config, ["cli"]) == (["cli", made], None)
    monkeypatch.setenv("COGKIT_GATEWAY_TOKENS", "a,b")
    assert load_tokens(config, []) == (["a", "b", made], None)
    config.write_text("tokens = 'oops'\n")
    with pytest.raises(ValueError, match="tokens"):
        load_tokens(config, [])


def test_predictions_side_by_side_keep_their_own_metrics(gateway, gateway_client):
    # different token budgets, all on the server at once (up to its concurrency): each prediction's
    # counts must be its own, not a neighbour's
    slots = min(gateway.workers()["llm"]["concurrency"], 4)
    made = [gateway_client.predictions.create(model="local/llm", input={**LONG, "max_new_tokens": 20 + 7 * i})
            for i in range(slots)]
    for i, prediction in enumerate(made):
        prediction.wait()
        assert prediction.status == "succeeded"
        assert prediction.metrics["output_token_count"] == 20 + 7 * i, (i, prediction.metrics)
        assert prediction.metrics["seed"] == LONG["seed"]
