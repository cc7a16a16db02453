"""Hostile and careless requests to `cogkit gateway` (issue 10): each is refused with a problem+json
naming the field before anything is stored, and the gateway keeps serving."""

import json
import threading
import time

import pytest
import requests

from cogkit.gateway.store import Store
from models import MODELS
from tests.fixtures_gateway import TOKEN, GatewayProcess

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHORT = {"prompt": "Hello there", "max_new_tokens": 3, "temperature": 1.0, "seed": 5}


def post(gateway, path: str, body: bytes, **headers) -> requests.Response:
    return requests.post(f"{gateway.url}{path}", data=body, verify=gateway.verify, timeout=120,
                         headers={**AUTH, "Content-Type": "application/json", **headers})


def stored_ids(gateway) -> list[str]:
    resp = gateway.get("/v1/predictions")
    assert resp.status_code == 200, resp.text[:300]
    return [p["id"] for p in resp.json()["results"]]


def assert_refused(gateway, body: bytes, status: int, *words: str, path="/v1/models/local/llm/predictions"):
    before = stored_ids(gateway)
    resp = post(gateway, path, body)
    assert resp.status_code == status, (body[:60], resp.status_code, resp.text[:300])
    if path == "/v1/chat/completions" and status != 413:  # the OpenAI route answers in OpenAI's error shape
        detail = resp.json()["error"]["message"]
    else:
        assert resp.headers["content-type"] == "application/problem+json"
        detail = resp.json()["detail"]
    assert all(w in detail for w in words), (words, detail)
    assert stored_ids(gateway) == before  # nothing stored
    return detail


def llm_body(**inputs) -> bytes:
    return json.dumps({"input": {**SHORT, **inputs}}).encode()


def test_gateway_refuses_malformed_and_non_finite_bodies(gateway):
    for constant in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = b'{"input": {"prompt": "hi", "temperature": %s}}' % constant.encode()
        assert_refused(gateway, body, 422, "input.temperature", "finite")
    assert_refused(gateway, b'{"version": "local/llm", "input": {"prompt": "hi", "top_p": NaN}}', 422,
                   "input.top_p", path="/v1/predictions")
    assert_refused(gateway, b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested")
    assert_refused(gateway, b'{"input": {"prompt": ' + b"[" * 40 + b"]" * 40 + b"}}", 400, "nested")
    assert_refused(gateway, b'{"input": {"prompt": "\xff\xfe"}}', 400, "not valid JSON")
    assert_refused(gateway, b'{"input": {"prompt": "\\ud800"}}', 422, "input.prompt", "surrogate")
    assert_refused(gateway, b"\x00garbage", 400, "not valid JSON")
    assert_refused(gateway, b"[1, 2]", 400, "JSON object")
    assert_refused(gateway, llm_body(seed=2**63), 422, "seed")
    assert_refused(gateway, llm_body(seed=2.0**63), 422, "seed")
    assert_refused(gateway, llm_body(max_new_tokens=2.5), 422, "max_new_tokens")
    assert stored_ids(gateway) is not None  # the listing still answers
    for metadata in ('{"a": NaN}', "[1]", "{"):
        upload = requests.post(f"{gateway.url}/v1/files", files={"content": ("x.txt", b"x", "text/plain")},
                               data={"metadata": metadata}, headers=AUTH, verify=gateway.verify, timeout=60)
        assert upload.status_code == 422 and "metadata" in upload.json()["detail"], upload.text
    assert gateway.get("/v1/files").status_code == 200


def test_gateway_refuses_bodies_over_the_limit(gateway):
    huge = json.dumps({"input": {**SHORT, "prompt": "a" * (33 << 20)}}).encode()
    assert_refused(gateway, huge, 413, "larger than")
    before = stored_ids(gateway)
    chunks = (huge[i:i + (1 << 20)] for i in range(0, len(huge), 1 << 20))  # chunked: no Content-Length
    resp = requests.post(f"{gateway.url}/v1/models/local/llm/predictions", data=chunks, verify=gateway.verify,
                         headers={**AUTH, "Content-Type": "application/json"}, timeout=120)
    assert resp.status_code == 413 and stored_ids(gateway) == before
    # every route that reads JSON, also the OpenAI-compatible one
    chat = json.dumps({"model": "local/llm", "messages": [{"role": "user", "content": "a" * (33 << 20)}]}).encode()
    assert_refused(gateway, chat, 413, "larger than", path="/v1/chat/completions")
    nested = b'{"model": "local/llm", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_refused(gateway, nested, 400, "nested", path="/v1/chat/completions")


def test_integral_floats_are_the_integers_on_the_gateway(gateway):
    exact = post(gateway, "/v1/models/local/llm/predictions", llm_body(), Prefer="wait")
    floats = post(gateway, "/v1/models/local/llm/predictions",
                  llm_body(max_new_tokens=3.0, seed=5.0, top_k=50.0), Prefer="wait")
    assert exact.status_code == floats.status_code == 201
    a, b = exact.json(), floats.json()
    assert a["status"] == b["status"] == "succeeded", (a["error"], b["error"])
    assert a["output"] == b["output"]
    assert b["input"]["max_new_tokens"] == 3 and isinstance(b["input"]["max_new_tokens"], int)


@pytest.mark.skipif("image" not in MODELS, reason="no image model in MODELS")
def test_gateway_refuses_file_inputs_that_are_not_urls_or_data_uris(gateway, image_weights, tmp_path):
    picture = tmp_path / "picture.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")
    path = "/v1/models/local/image/predictions"
    for value, words in [(str(picture), ("image", "is not accepted")), ("/etc/passwd", ("is not accepted",)),
                         ("../../../etc/passwd", ("is not accepted",)),
                         (f"file://{picture}", ("file:// URLs",)), ("ftp://127.0.0.1/x.png", ("ftp:// URLs",)),
                         ("data:nocomma", ("no comma",)), ("data:image/png;base64,@@@", ("not valid base64",)),
                         ("http://", ("not a valid URL",)), ("", ("image",))]:
        body = json.dumps({"input": {"prompt": "a fox", "image": value}}).encode()
        assert_refused(gateway, body, 422, "image", *words, path=path)
    # the gateway's own file URLs, and http(s) URLs in general, are file inputs
    upload = requests.post(f"{gateway.url}/v1/files", files={"content": ("p.png", b"\x89PNG", "image/png")},
                           headers=AUTH, verify=gateway.verify, timeout=60)
    assert upload.status_code == 201, upload.text
    own = upload.json()["urls"]["get"]
    created = post(gateway, path, json.dumps({"input": {"prompt": "a fox", "image": own,
                                                         "num_inference_steps": 1}}).encode(), Prefer="wait")
    assert created.status_code == 201
    # the upload is not a picture: the model itself says so, naming the input
    assert created.json()["status"] == "failed" and "image: not a readable image" in created.json()["error"]
    assert "Prediction failed" not in created.json()["error"]


def test_a_stored_row_with_nan_does_not_break_the_listing(tmp_path, gateway_weights_root):
    """Rows stored before non-finite numbers were refused still list (as null)."""
    data = tmp_path / "data"
    store = Store(data / "gateway.db")
    store.save_prediction({"id": "old", "model": "local/llm", "status": "succeeded",
                           "created_at": "2026-01-01T00:00:00.000Z", "input": {"temperature": float("nan")},
                           "metrics": {"x": float("inf")}})
    store.close()
    gw = GatewayProcess(data, gateway_weights_root, None).start()
    try:
        listed = gw.get("/v1/predictions")
        assert listed.status_code == 200, listed.text[:300]
        assert listed.json()["results"][0]["input"] == {"temperature": None}
        assert gw.get("/v1/predictions/old").json()["metrics"] == {"x": None}
    finally:
        gw.stop()


class HangingReceiver:
    """Takes a webhook POST and does not answer until released; records whether the sender was
    still waiting (the connection open) at a given moment."""

    def __init__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.got_request = threading.Event()
        self.sender_gave_up = threading.Event()
        self.release = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import select

        conn, _ = self.sock.accept()
        conn.recv(65536)
        self.got_request.set()
        while not self.release.is_set():
            if select.select([conn], [], [], 0.05)[0] and conn.recv(1) == b"":
                self.sender_gave_up.set()  # the sender closed the connection (its timeout)
                break
        if not self.sender_gave_up.is_set():
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        conn.close()


def test_a_hanging_webhook_receiver_delays_only_its_own_deliveries(gateway, webhook_receiver):
    hanging = HangingReceiver()
    try:
        first = post(gateway, "/v1/models/local/llm/predictions",
                     json.dumps({"input": SHORT, "webhook": hanging.url,
                                 "webhook_events_filter": ["completed"]}).encode())
        assert first.status_code == 201
        assert hanging.got_request.wait(120), "the first prediction's webhook never came"
        second = post(gateway, "/v1/models/local/llm/predictions",
                      json.dumps({"input": SHORT, "webhook": webhook_receiver.url,
                                  "webhook_events_filter": ["completed"]}).encode(), Prefer="wait")
        assert second.json()["status"] == "succeeded"
        pid = second.json()["id"]
        deadline = time.monotonic() + 60
        while not webhook_receiver.for_prediction(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # delivered while the sender was still waiting on the hanging receiver, not after its timeout
        assert webhook_receiver.for_prediction(pid)
        assert not hanging.sender_gave_up.is_set()
    finally:
        hanging.release.set()
