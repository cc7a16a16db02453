"""Session fixture for the JavaScript client tests: the official npm `replicate` package, pinned in
tests/js/package.json and installed by `npm ci` into tests/js/node_modules (git-ignored). `make test`
installs it before pytest starts; this fixture installs it when pytest runs on its own."""

import json
import os
import shutil
import subprocess

import pytest

from cogkit.weights import project_root
from tests.fixtures_gateway import TOKEN

JS_DIR = project_root() / "tests" / "js"


def pinned_version() -> str:
    return json.loads((JS_DIR / "package.json").read_text())["dependencies"]["replicate"]


def installed_version() -> str | None:
    manifest = JS_DIR / "node_modules" / "replicate" / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.is_file() else None


class JsClient:
    """Runs a scenario of tests/js/client.mjs against a gateway; returns the JSON lines it printed."""

    def __init__(self, node: str):
        self.node = node

    def run(self, gateway, scenario: str, timeout: float = 240, **args) -> list[dict]:
        env = {**os.environ, "REPLICATE_API_TOKEN": TOKEN, "COGKIT_GATEWAY_URL": gateway.url}
        if gateway.cert:  # Node's fetch trusts the test certificate
            env["NODE_EXTRA_CA_CERTS"] = str(gateway.cert[0])
        proc = subprocess.run([self.node, str(JS_DIR / "client.mjs"), scenario, json.dumps(args)],
                              cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=timeout)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        assert proc.returncode == 0 and not any("uncaught" in line for line in lines), \
            f"node {scenario} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return lines


@pytest.fixture(scope="session")
def js_client() -> JsClient:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the gateway's JavaScript client tests need Node.js 20 and npm on PATH")
    if installed_version() != pinned_version():
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"npm ci in {JS_DIR} failed:\n{proc.stderr[-3000:]}"
    assert installed_version() == pinned_version()
    return JsClient(node)
