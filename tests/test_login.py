"""`cogkit login`: Cog's token flow against a local stand-in for r8.im's two token endpoints."""

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from cogkit.weights import project_root

GOOD = "cli-token-123"


class FakeR8(BaseHTTPRequestHandler):
    calls: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        FakeR8.calls.append((self.path, self.headers.get("Content-Type"), body))
        token = parse_qs(body).get("token", [""])[0]
        if self.path != "/cog/v1/verify-token":
            self.send_response(404)
            self.end_headers()
            return
        ok = token == GOOD
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"username": "acme"} if ok else {}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_r8():
    FakeR8.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeR8)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def login(registry, token, docker_config):
    env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
    return subprocess.run([sys.executable, "-m", "cogkit.cli", "login", "--token-stdin", "--registry", registry],
                          input=token, cwd=project_root(), env=env, capture_output=True, text=True, timeout=60)


def test_login_verifies_the_token_and_stores_registry_credentials(fake_r8, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"other.io": {"auth": "eDp5"}}}))
    res = login(fake_r8, GOOD + "\n", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "authenticated as acme" in res.stderr
    assert FakeR8.calls == [("/cog/v1/verify-token", "application/x-www-form-urlencoded", f"token={GOOD}")]
    auths = json.loads((tmp_path / "config.json").read_text())["auths"]
    host = fake_r8.split("://")[1]
    assert base64.b64decode(auths[host]["auth"]).decode() == f"acme:{GOOD}"
    assert auths["other.io"] == {"auth": "eDp5"}  # other registries' credentials kept
    assert oct((tmp_path / "config.json").stat().st_mode & 0o777) == "0o600"


def test_login_refuses_an_api_token_without_sending_it(fake_r8, tmp_path):
    res = login(fake_r8, "r8_abcdef", tmp_path)
    assert res.returncode == 1
    assert "that looks like a Replicate API token, not a CLI auth token" in res.stderr
    assert "https://replicate.com/auth/token" in res.stderr
    assert FakeR8.calls == [] and not (tmp_path / "config.json").exists()


def test_login_with_an_unknown_token_stores_nothing(fake_r8, tmp_path):
    res = login(fake_r8, "wrong", tmp_path)
    assert res.returncode == 1 and "user does not exist" in res.stderr
    assert not (tmp_path / "config.json").exists()
    assert "Traceback" not in res.stderr
