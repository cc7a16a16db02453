"""Hostile and careless input through the real coglet server of every model (issue 10): types, bounds,
non-finite numbers, huge and odd strings, malformed bodies and every form of file input. Each test
sends its whole batch to one session server, then checks that the server is READY and that a normal
prediction still succeeds."""

import base64
import io
import re
import struct
import threading
import time
import zlib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests

from cogkit.server import ServerError
from tests.fixtures_audio import FOX, data_uri, encode_sound

NOT_ACCEPTED = "not accepted"


def post_raw(server, body: bytes, content_type: str = "application/json") -> requests.Response:
    return requests.post(f"{server.url}/predictions", data=body, headers={"Content-Type": content_type},
                         timeout=120)


def assert_ready_and_serving(server, normal: dict) -> dict:
    deadline = time.monotonic() + 30
    while (server.health() or {}).get("status") != "READY" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (server.health() or {}).get("status") == "READY", server.health()
    result = server.predict(normal)
    assert result["status"] == "succeeded", result.get("error")
    return result


def refused(server, inputs: dict, field: str, *words: str) -> str:
    """The prediction fails (or coglet answers 422) with one line naming `field` and `words`, as
    cogkit's client (`cogkit predict`, the gateway) reports it."""
    try:
        result = server.predict(inputs)
    except ServerError as e:  # coglet's 422
        text = str(e)
    else:
        assert result["status"] == "failed", (inputs, result)
        text = result["error"]
    assert "\n" not in text.strip() and "Traceback" not in text and "Prediction failed" not in text, text
    assert not re.match(r"\w+Error: ", text), text  # one line: `field: problem`, no class name
    assert field in text and all(w in text for w in words), (field, words, text)
    return text


def malformed_bodies() -> list[bytes]:
    return [b'{"input": {"x": NaN}}', b'{"input": {"x": 1e999}}', b'{"input": {"x": "\xff\xfe"}}',
            b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"\x00\x01garbage", b"[1, 2]",
            b'{"input": {"x": "\\ud800"}}', b"", b'{"input": "not an object"}']


def assert_malformed_bodies_refused(server):
    for body in malformed_bodies():
        resp = post_raw(server, body)
        assert 400 <= resp.status_code < 500, (body[:40], resp.status_code, resp.text[:200])


@pytest.fixture(scope="module")
def http_files(tmp_path_factory):
    """A local HTTP server for URL inputs: /NAME serves a file, /hang never answers."""
    folder = tmp_path_factory.mktemp("served")

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):
            if self.path.startswith("/hang"):
                time.sleep(15)
                return
            if self.path.startswith("/drip"):  # a byte every 0.2 s, for ever
                self.send_response(200)
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def file_forms(local_file, http_base: str) -> list[tuple[str, tuple[str, ...]]]:
    """(value, words the error must hold) for every file input form that must be refused."""
    return [
        (str(local_file), (NOT_ACCEPTED,)),
        ("/etc/passwd", (NOT_ACCEPTED,)),
        ("../../../../../../etc/passwd", (NOT_ACCEPTED,)),
        (local_file.name, (NOT_ACCEPTED,)),
        (f"file://{local_file}", ("file:// URLs", NOT_ACCEPTED)),
        ("ftp://127.0.0.1/x.bin", ("ftp:// URLs", NOT_ACCEPTED)),
        ("http://127.0.0.1:1/x.bin", ("could not download", "cannot connect")),
        (f"{http_base}/missing.bin", ("could not download", "HTTP 404")),
        ("data:nocomma", ("no comma",)),
        ("data:application/octet-stream;base64,@@@", ("not valid base64",)),
    ]


# ------------------------------------------------------------------------------ whisper


def test_whisper_refuses_hostile_input(whisper_server, fox_speech, http_files, tmp_path):
    folder, base = http_files
    speech = tmp_path / "speech.wav"
    speech.write_bytes(fox_speech)  # a real clip the server could read if it opened client-named paths
    for value, words in file_forms(speech, base):
        text = refused(whisper_server, {"audio": value}, "audio", *words)
        assert "fox" not in text.lower()
    (folder / "garbage.wav").write_bytes(b"not audio at all\n" * 50)
    refused(whisper_server, {"audio": f"{base}/garbage.wav"}, "audio", "not a readable audio file")
    refused(whisper_server, {"audio": data_uri(fox_speech[:len(fox_speech) // 2])}, "audio", "truncated")
    refused(whisper_server, {"audio": data_uri(b"")}, "audio", "the file is empty")
    # over three hours, in 22 kB: one sample per second
    long_clip = encode_sound((np.sin(np.arange(11_000)) * 0.5).astype(np.float32), 1)
    refused(whisper_server, {"audio": data_uri(long_clip)}, "audio", "longer than the limit")
    refused(whisper_server, {"audio": data_uri(fox_speech), "temperature": "hot"}, "temperature")
    refused(whisper_server, {"audio": data_uri(fox_speech), "language": "x" * 100_000}, "language")
    refused(whisper_server, {"audio": data_uri(fox_speech), "task": "delete"}, "task")
    assert_malformed_bodies_refused(whisper_server)
    out = assert_ready_and_serving(whisper_server, {"audio": data_uri(fox_speech)})
    assert "fox" in out["output"]["transcription"].lower()


def test_a_url_that_never_answers_fails_naming_the_input(whisper_server, http_files):
    _, base = http_files
    refused(whisper_server, {"audio": f"{base}/hang.wav"}, "audio", "could not download", "no answer")


# ------------------------------------------------------------------------------ image


def png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge picture (a decompression bomb) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_image_refuses_hostile_input(image_server, http_files, tmp_path):
    folder, base = http_files
    fast = {"prompt": "a red fox", "num_inference_steps": 1, "output_format": "png"}
    picture = tmp_path / "picture.png"
    picture.write_bytes(png(64, 64))
    for value, words in file_forms(picture, base):
        refused(image_server, {**fast, "image": value}, "image", *words)
    refused(image_server, {**fast, "image": data_uri(b"garbage" * 100, "image/png")}, "image", "not a readable image")
    refused(image_server, {**fast, "image": data_uri(png(64, 64)[:80], "image/png")}, "image", "not a readable image")
    refused(image_server, {**fast, "image": data_uri(png_declaring(30_000, 30_000), "image/png")}, "image",
            "too large")
    refused(image_server, {**fast, "seed": 2**63}, "seed", "maximum")
    refused(image_server, {**fast, "seed": 2.0**63}, "seed", "maximum")
    refused(image_server, {**fast, "num_outputs": 1.5}, "num_outputs")
    refused(image_server, {**fast, "width": 100}, "width", "multiple of 8")
    refused(image_server, {**fast, "width": "64"}, "width")
    refused(image_server, {**fast, "prompt": "x" * 2001}, "prompt")
    refused(image_server, {**fast, "guidance_scale": -1}, "guidance_scale")
    assert_malformed_bodies_refused(image_server)
    # integers sent as integral floats are those integers, on the server as on the gateway
    seeded = {**fast, "seed": 3, "num_outputs": 1, "width": 64}
    exact = assert_ready_and_serving(image_server, seeded)["output"]
    assert image_server.predict({**seeded, "seed": 3.0, "num_outputs": 1.0, "width": 64.0})["output"] == exact
    zero = image_server.predict({**fast, "seed": 0})["output"]
    assert image_server.predict({**fast, "seed": -0.0})["output"] == zero
    assert image_server.predict({**fast, "seed": 0.0})["output"] == zero


# ------------------------------------------------------------------------------ tts


def test_tts_refuses_hostile_input(tts_server):
    refused(tts_server, {"text": "Hello\x00world"}, "text", "U+0000")
    refused(tts_server, {"text": "Hello \x1b[31m world"}, "text", "U+001B")
    refused(tts_server, {"text": "x" * 5001}, "text")
    refused(tts_server, {"text": "   "}, "text")
    refused(tts_server, {"text": "!!! ???"}, "text", "no letters")
    refused(tts_server, {"text": "Hi", "speed": 0}, "speed")
    refused(tts_server, {"text": "Hi", "speed": "fast"}, "speed")
    refused(tts_server, {"text": "Hi", "output_format": "exe"}, "output_format")
    assert_malformed_bodies_refused(tts_server)
    assert_ready_and_serving(tts_server, {"text": FOX, "variation": 0.0})


# ------------------------------------------------------------------------------ llm


def test_llm_refuses_hostile_input(llm_server):
    short = {"prompt": "Hi", "max_new_tokens": 3, "temperature": 0}
    refused(llm_server, {**short, "seed": 2**63}, "seed", "maximum")
    refused(llm_server, {**short, "max_new_tokens": 0}, "max_new_tokens")
    refused(llm_server, {**short, "max_new_tokens": 2.5}, "max_new_tokens")
    refused(llm_server, {**short, "top_k": -1}, "top_k")
    refused(llm_server, {**short, "prompt": ""}, "prompt")
    refused(llm_server, {**short, "prompt": "a" * ((1 << 20) + 1)}, "prompt")
    refused(llm_server, {**short, "prompt": "Hi", "stop_sequences": "," * 1001}, "stop_sequences")
    refused(llm_server, {**short, "temperature": "warm"}, "temperature")
    assert_malformed_bodies_refused(llm_server)
    exact = assert_ready_and_serving(llm_server, {**short, "seed": 5})["output"]
    assert llm_server.predict({**short, "max_new_tokens": 3.0, "seed": 5.0, "top_k": 50.0})["output"] == exact


# ------------------------------------------------------------------------------ the download hooks


def test_downloads_are_bounded_in_size_and_time(http_files, monkeypatch):
    """coglet's own URLPath (cog.types) with cogkit's hooks, against a real HTTP server."""
    from cog import types as cog_types

    from cogkit import inputs

    folder, base = http_files
    (folder / "big.bin").write_bytes(b"x" * 5000)
    (folder / "small.bin").write_bytes(b"y" * 100)
    inputs.install_download_hooks()
    monkeypatch.setattr(inputs, "MAX_DOWNLOAD", 1000)
    big = cog_types.Path.validate(f"{base}/big.bin").convert()
    with pytest.raises(inputs.InputError, match=r"audio: the file is larger than the limit of 1000 bytes"):
        inputs.file_input("audio", big)
    small = cog_types.Path.validate(f"{base}/small.bin").convert()
    assert inputs.file_input("audio", small).read_bytes() == b"y" * 100
    small.unlink()
    monkeypatch.setattr(inputs, "DOWNLOAD_DEADLINE", 1.0)
    dripping = cog_types.Path.validate(f"{base}/drip.bin").convert()
    with pytest.raises(inputs.InputError, match=r"audio: could not download .*not complete after 1 s"):
        inputs.file_input("audio", dripping)


# ------------------------------------------------------------------------------ crashes


def test_a_killed_cogkit_serve_leaves_no_model_server(tiny_weights_root):
    import os
    import signal
    import subprocess
    import sys

    from cogkit.server import free_port
    from cogkit.weights import project_root
    from tests.fixtures_gateway import group_alive

    port = free_port()
    env = {**os.environ, "COGKIT_WEIGHTS_DIR": str(tiny_weights_root)}
    cli = subprocess.Popen([sys.executable, "-m", "cogkit.cli", "serve", "llm", "--port", str(port)],
                           cwd=project_root(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert cli.poll() is None and time.monotonic() < deadline, "cogkit serve did not get READY"
            try:
                if requests.get(f"http://127.0.0.1:{port}/health-check", timeout=2).json()["status"] == "READY":
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent_of(p) == cli.pid]
        assert children, "no model server under cogkit serve"
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        deadline = time.monotonic() + 30
        while any(map(group_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(group_alive, children)), "the model server outlived cogkit serve"
    finally:
        cli.kill()
        for group in children if "children" in locals() else []:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _parent_of(pid: str) -> int | None:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])
