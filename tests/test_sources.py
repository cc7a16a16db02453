"""Weight sources: a hub-style cache folder, HTTP downloads (ranged, dropped, checked), tarballs."""

import hashlib
import http.server
import os
import tarfile
import threading

import pytest

from cogkit.build import build_weights
from cogkit.download import download
from cogkit.sources import SourceError, resolve
from cogkit.weights import read_manifest, verify


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `files` with byte ranges; `drop_after` cuts the first response for a path midway."""
    files: dict = {}
    drops: dict = {}
    ranged = True
    requests_seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        self.requests_seen.append((self.path, self.headers.get("Range")))
        if data is None:
            self.send_error(404, "Not Found")
            return
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range")
        if rng and self.ranged:
            a, _, b = rng.removeprefix("bytes=").partition("-")
            start, end = int(a), int(b) if b else len(data) - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:end + 1]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        budget = self.drops.get(self.path, 0)
        if budget and len(body) > budget:
            self.drops[self.path] = 0  # drop once, then behave
            self.wfile.write(body[:budget])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def http_server():
    RangeHandler.files, RangeHandler.drops, RangeHandler.requests_seen = {}, {}, []
    RangeHandler.ranged = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_parallel_ranged_download_resumes_after_a_dropped_connection(http_server, tmp_path):
    _, base = http_server
    data = os.urandom(3 * 1024 * 1024 + 123)
    RangeHandler.files["/model.safetensors"] = data
    RangeHandler.drops["/model.safetensors"] = 200_000
    path = download(f"{base}/model.safetensors", tmp_path / "model.safetensors",
                    sha256=hashlib.sha256(data).hexdigest(), chunk=1024 * 1024)
    assert path.read_bytes() == data
    ranges = [r for p, r in RangeHandler.requests_seen if r and r != "bytes=0-0"]
    assert len(ranges) >= 5  # four chunks, plus the resumed one
    assert any(not r.startswith(("bytes=0-", "bytes=1048576-", "bytes=2097152-", "bytes=3145728-"))
               for r in ranges)  # a range that restarts midway: the resume


def test_download_without_range_support(http_server, tmp_path):
    _, base = http_server
    RangeHandler.ranged = False
    RangeHandler.files["/w.bin"] = b"x" * 5000
    assert download(f"{base}/w.bin", tmp_path / "w.bin").read_bytes() == b"x" * 5000


def test_wrong_sha256_fails_naming_the_url_and_leaves_nothing(http_server, tmp_path):
    _, base = http_server
    RangeHandler.files["/model.safetensors"] = b"not the weights you wanted"
    with pytest.raises(SourceError, match=r"/model.safetensors: sha256 \w+ does not match the expected 00"):
        resolve(f"{base}/model.safetensors#sha256={'0' * 64}", workdir=tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


def test_missing_url_is_a_clear_error(http_server, tmp_path):
    _, base = http_server
    with pytest.raises(SourceError, match=r"/nope.tar.gz: HTTP 404"):
        resolve(f"{base}/nope.tar.gz", workdir=tmp_path)


def test_build_from_a_tarball_url_and_failed_download_leaves_no_folder(http_server, tmp_path,
                                                                      tiny_llm_source):
    _, base = http_server
    archive = tmp_path / "ckpt.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_llm_source, arcname="tiny-llama")
    RangeHandler.files["/ckpt.tar.gz"] = archive.read_bytes()
    RangeHandler.drops["/ckpt.tar.gz"] = 5000
    dest = tmp_path / "weights" / "llm"
    manifest = build_weights("llm", source=f"{base}/ckpt.tar.gz", dtype="float32", dest=dest, log=lambda *a: None)
    assert manifest["source"] == f"{base}/ckpt.tar.gz"
    assert verify(dest) == [] and not (dest / ".source").exists()

    with pytest.raises(SourceError, match="HTTP 404"):
        build_weights("llm", source=f"{base}/missing.tar.gz", dest=tmp_path / "weights" / "other",
                      log=lambda *a: None)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["llm"]


def test_hf_source_from_a_local_hub_cache(tmp_path, tiny_llm_source, monkeypatch):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in tiny_llm_source.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (snap / "training_args.bin").write_bytes(b"not needed")  # filtered out by the allow patterns
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    path, facts = resolve("hf:acme/tiny-llama")
    assert path == snap and facts == {"source": "hf:acme/tiny-llama", "revision": revision}
    dest = tmp_path / "w" / "llm"
    build_weights("llm", source=f"hf:acme/tiny-llama@{revision}", dtype="float32", dest=dest, log=lambda *a: None)
    assert read_manifest(dest)["revision"] == revision

    with pytest.raises(SourceError, match="not in the local Hugging Face cache"):
        resolve("hf:acme/absent-model")
