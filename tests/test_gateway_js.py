"""`cogkit gateway` with the official JavaScript client (npm `replicate`, pinned in tests/js), over
the gateway's HTTPS on 127.0.0.1: the calls the Python client tests cover, and signed stream URLs."""

import sqlite3
import time

import pytest
import requests

from cogkit.gateway.stream_urls import LIFETIME, StreamSigner
from models import MODELS
from tests.fixtures_gateway import TOKEN
from tests.test_gateway import LONG, short
from tests.test_gateway_image import image_kind, picture_input


def as_sse(text: str) -> str:
    """SSE carries a CR inside a token as a line break, as the protocol has it."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def test_js_stream_prints_the_llms_tokens(gateway, js_client):
    inputs = short(seed=3, tokens=40)
    events = js_client.run(gateway, "stream", model="local/llm", input=inputs)
    print("".join(e["data"] for e in events if e["event"] == "output"))
    assert [e["event"] for e in events][-1] == "done"
    tokens = [e["data"] for e in events if e["event"] == "output"]
    assert len(tokens) >= 5
    assert [int(e["id"]) for e in events] == list(range(len(events)))
    expected = "".join(gateway.client().run("local/llm", input=inputs))  # same seed, same text
    assert "".join(tokens) == as_sse(expected)


def test_js_run_returns_the_text(gateway, js_client):
    [result] = js_client.run(gateway, "run", model="local/llm", input=short(seed=7))
    assert isinstance(result["output"], list) and result["output"]
    assert "".join(result["output"]) == "".join(gateway.client().run("local/llm", input=short(seed=7)))


def test_js_predictions_create_get_list_cancel(gateway, js_client):
    steps = {line["step"]: line for line in js_client.run(gateway, "lifecycle", model="local/llm",
                                                           long=LONG, short=short(seed=2))}
    created, got, canceled = steps["create"], steps["get"], steps["cancel"]
    assert created["status"] == "starting" and created["urls"]["stream"].startswith(gateway.url)
    assert got["id"] == created["id"] and got["status"] == "processing" and got["outputs"] >= 3
    assert canceled["status"] in ("canceled", "processing")  # coglet confirms the cancel a moment later
    assert steps["final"]["status"] == "canceled" and 3 <= steps["final"]["outputs"] < 8192
    waited = steps["wait"]
    assert waited["status"] == "succeeded" and waited["output"] and waited["metrics"]["output_token_count"] >= 1
    listed = steps["list"]
    assert listed["ids"][:2] == [waited["id"], created["id"]]  # newest first
    assert listed["statuses"][waited["id"]] == "succeeded"


def test_js_errors_are_api_errors_with_their_status(gateway, js_client):
    run, get = js_client.run(gateway, "errors", model="local/llm", badInput={"prompt": "hi", "max_new_tokens": 0})
    assert run["status"] == 422 and "max_new_tokens" in run["message"]
    assert get["status"] == 404 and "does not exist" in get["message"]


@pytest.mark.skipif("image" not in MODELS, reason="no image model in MODELS")
def test_js_file_input_and_file_outputs(gateway, js_client, image_weights, tmp_path):
    # a picture made by the model is the next prediction's file input
    first = gateway.client().run("local/image", input=picture_input(num_inference_steps=2))
    picture = tmp_path / "input.png"
    picture.write_bytes((first[0] if isinstance(first, list) else first).read())
    before = {f["id"] for f in gateway.get("/v1/files").json()["results"]}
    [result] = js_client.run(gateway, "files", model="local/image", fileInput="image", path=str(picture),
                             input=picture_input(prompt_strength=0.5, num_inference_steps=2))
    uploads = [f for f in gateway.get("/v1/files").json()["results"] if f["id"] not in before]
    assert any(f["size"] == picture.stat().st_size for f in uploads)  # sent through POST /v1/files
    files = result["files"]
    assert files
    if gateway.cert:  # the client wraps only https: URLs (and data: URIs) in FileOutput
        assert all("url" in f for f in files)
        assert all(f["url"].startswith(f"{gateway.url}/v1/files/") and "signature=" in f["url"] for f in files)
        assert all(image_kind(bytes.fromhex(f["head"])) and f["size"] > 100 for f in files)
    else:
        assert all(f["plain"].startswith(f"{gateway.url}/v1/files/") for f in files)


# ---------------------------------------------------------------- signed stream URLs


def stream_key(gateway) -> bytes:
    db = sqlite3.connect(str(gateway.data_dir / "gateway.db"))
    try:
        return bytes.fromhex(db.execute("SELECT value FROM meta WHERE key='stream_signing_key'").fetchone()[0])
    finally:
        db.close()


def sse_get(gateway, url: str, token: bool = False) -> requests.Response:
    headers = {"Accept": "text/event-stream", **({"Authorization": f"Bearer {TOKEN}"} if token else {})}
    return requests.get(url, headers=headers, verify=gateway.verify, timeout=60)


def test_stream_urls_open_one_prediction_until_they_expire(gateway, gateway_client):
    one, other = (gateway_client.models.predictions.create(model="local/llm", input=short(seed=s, tokens=4),
                                                            wait=30) for s in (5, 6))
    url = one.urls["stream"]
    path, _, query = url.partition("?")
    as_handed_out = sse_get(gateway, url)
    assert as_handed_out.status_code == 200 and as_handed_out.text.rstrip().endswith("data: {}")
    assert as_handed_out.headers["access-control-allow-origin"] == "*"  # a browser's EventSource may read it
    refused = {
        "another prediction's": f"{other.urls['stream'].partition('?')[0]}?{query}",
        "an altered": url[:-1] + ("A" if url[-1] != "A" else "B"),
        "an expired": StreamSigner(stream_key(gateway), gateway.url).url(one.id, now=time.time() - LIFETIME - 60),
    }
    for what, bad in refused.items():
        resp = sse_get(gateway, bad)
        assert resp.status_code == 403, f"{what} signature was accepted"
        assert resp.headers["content-type"] == "application/problem+json"
    assert "expired" in sse_get(gateway, refused["an expired"]).json()["detail"]
    assert sse_get(gateway, refused["an expired"], token=True).status_code == 200  # the token still opens it
    # the plain route still takes the bearer token, and only the token
    assert sse_get(gateway, path).status_code == 401
    assert sse_get(gateway, path, token=True).text == as_handed_out.text
    # a stream link opens nothing else
    pid_path = path.rsplit("/", 1)[0]
    assert requests.get(f"{pid_path}?{query}", verify=gateway.verify).status_code == 401


def test_stream_signer_checks_prediction_expiry_and_signature():
    signer = StreamSigner(b"k" * 32, "http://gw", lifetime=60)
    url = signer.url("abc", now=1000)
    query = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    assert signer.check("abc", query["expiry"], query["signature"], now=1059) is None
    assert "expired" in signer.check("abc", query["expiry"], query["signature"], now=1061)
    assert "does not match" in signer.check("abd", query["expiry"], query["signature"], now=1000)
    assert "does not match" in signer.check("abc", str(int(query["expiry"]) + 1), query["signature"], now=1000)
    assert "does not match" in StreamSigner(b"x" * 32, "http://gw").check("abc", query["expiry"],
                                                                          query["signature"], now=1000)
    assert "Unix timestamp" in signer.check("abc", "soon", query["signature"])
