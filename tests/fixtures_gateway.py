"""Session fixtures for the gateway tests: a real `cogkit gateway` process on 127.0.0.1 (HTTPS with a
throw-away self-signed certificate, so the replicate client turns file outputs into FileOutput),
serving the tiny models, and a webhook receiver."""

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from cogkit.server import free_port
from cogkit.weights import project_root

TOKEN = "r8_test_token"


class GatewayProcess:
    """`cogkit gateway` in a subprocess; its model servers read weights from `weights_root`."""

    def __init__(self, data_dir: Path, weights_root: Path, cert: tuple[Path, Path] | None,
                 models: str = "llm", page_size: int = 100, extra_args: tuple = (), env: dict | None = None):
        self.data_dir, self.weights_root, self.cert = data_dir, weights_root, cert
        self.models, self.page_size, self.extra_args = models, page_size, list(extra_args)
        self.env = env or {}
        self.port = free_port()
        self.url = f"{'https' if cert else 'http'}://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-gateway-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        cmd = [sys.executable, "-m", "cogkit.cli", "gateway", "--data", str(self.data_dir), "--token", TOKEN,
               "--port", str(self.port), "--models", self.models, "--page-size", str(self.page_size),
               "--setup-timeout", "180", *self.extra_args]
        if self.cert:
            cmd += ["--tls-cert", str(self.cert[0]), "--tls-key", str(self.cert[1])]
        env = {**os.environ, "COGKIT_WEIGHTS_DIR": str(self.weights_root), "OMP_NUM_THREADS": "1", **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=project_root(), env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the gateway exited:\n{self.log()}"
            try:
                if self.get("/v1/models").status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the gateway did not come up:\n{self.log()}")

    @property
    def verify(self):
        """`verify=` for requests: the test certificate when serving HTTPS."""
        return str(self.cert[0]) if self.cert else True

    def client_env(self) -> dict:
        """Environment for `cogkit call` against this gateway."""
        env = {"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": self.url}
        if self.cert:
            env["SSL_CERT_FILE"] = str(self.cert[0])  # httpx trusts the test certificate
        return env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"},
                            verify=self.verify, timeout=30, **kwargs)

    def workers(self) -> dict:
        return {w["model"]: w for w in self.get("/v1/gateway/workers").json()["results"]}

    def client(self):
        import httpx
        import replicate

        # the client wraps its own transport, so trust goes on the transport we hand it
        verify = ssl.create_default_context(cafile=str(self.cert[0])) if self.cert else True
        return replicate.Client(base_url=self.url, api_token=TOKEN, transport=httpx.HTTPTransport(verify=verify))

    def stop(self, sig=signal.SIGTERM) -> list[int]:
        """SIGTERM is a clean stop; SIGKILL a crash. Returns the model servers' process groups that
        outlived the gateway by 30 s (then kills them, so that no test leaves processes behind)."""
        if not self.proc or self.proc.poll() is not None:
            return []
        groups = [w["pid"] for w in self.workers().values() if w["pid"]]
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 30
        while any(map(group_alive, groups)) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [g for g in groups if group_alive(g)]
        for group in survivors:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return survivors


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still running (zombies waiting to be reaped are not)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.fixture(scope="session")
def gateway_cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, or None (plain HTTP) where there is no openssl."""
    if shutil.which("openssl") is None:
        return None
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="session")
def gateway_weights_root(tmp_path_factory, tiny_weights_root):
    """A weights root of its own (the image model may be built into it later), llm from the tiny one."""
    root = tmp_path_factory.mktemp("gateway-weights")
    (root / "llm").symlink_to(tiny_weights_root / "llm", target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def image_weights(gateway_weights_root):
    """The image model's default (generated, offline) weights, built by the real CLI into the
    gateway's weights root; in a subprocess so that diffusers stays out of the test process."""
    folder = gateway_weights_root / "image"
    if not (folder / "manifest.json").is_file():
        env = {**os.environ, "COGKIT_WEIGHTS_DIR": str(gateway_weights_root)}
        proc = subprocess.run([sys.executable, "-m", "cogkit.cli", "build-weights", "image"], cwd=project_root(),
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def gateway_models():
    from models import MODELS

    return "llm,image" if "image" in MODELS else "llm"


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, gateway_weights_root, gateway_cert, gateway_models):
    gw = GatewayProcess(tmp_path_factory.mktemp("gateway") / "data", gateway_weights_root, gateway_cert,
                        models=gateway_models).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def gateway_client(gateway):
    return gateway.client()


class WebhookReceiver:
    """Records every POST (headers, raw body); answers 500 to the first `fail_first` matching posts."""

    def __init__(self):
        self.received: list[tuple[dict, bytes]] = []
        self.fail_terminal = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = 200
                with receiver.lock:
                    receiver.received.append((dict(self.headers), body))
                    terminal = json.loads(body).get("status") in ("succeeded", "failed", "canceled")
                    if terminal and receiver.fail_terminal > 0:
                        receiver.fail_terminal -= 1
                        status = 500
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_prediction(self, prediction_id: str) -> list[tuple[dict, bytes]]:
        with self.lock:
            return [(h, b) for h, b in self.received if json.loads(b)["id"] == prediction_id]


@pytest.fixture(scope="session")
def webhook_receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()
