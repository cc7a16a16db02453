"""Run a predictor in the real Cog prediction server (coglet), with no Docker.

Each server gets its own working directory holding `.cog/openapi_schema.json` for its predictor,
because coglet reads the schema from its working directory and silently applies a stale one.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests

from cogkit.concurrency import runner_concurrency
from cogkit.schema import load_predictor_info, openapi_schema
from cogkit.weights import project_root


class ServerError(Exception):
    """The server failed to start or to run a prediction; the message is the server's own."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_schema(runner: str, workdir: Path, root: Path) -> dict:
    schema = openapi_schema(load_predictor_info(runner, root))
    (workdir / ".cog").mkdir(parents=True, exist_ok=True)
    (workdir / ".cog" / "openapi_schema.json").write_text(json.dumps(schema, indent=2))
    return schema


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield event, json.loads("\n".join(data))


# On the PYTHONPATH of every model server cogkit starts (cogkit/startup/sitecustomize.py).
STARTUP_DIR = Path(__file__).resolve().parent / "startup"

INPUT_ERROR_CLASS = re.compile(r"^[A-Za-z_]\w*(?:Error|Exception): (?=[a-z_][\w.\[\]]*: )")


def clean_error(result: dict) -> dict:
    """coglet 0.23.1 writes a failed prediction's error as `Prediction failed: Prediction failed:
    ValueError: audio: …` (an async run(): `Async prediction failed: …`): keep the one line that
    names the input and the problem."""
    error = result.get("error") if isinstance(result, dict) else None
    if isinstance(error, str):
        while prefix := next((p for p in ("Prediction failed: ", "Async prediction failed: ")
                              if error.startswith(p)), None):
            error = error[len(prefix):]
        # an input error's class name adds nothing to `field: problem` (other errors keep theirs)
        result["error"] = INPUT_ERROR_CLASS.sub("", error, count=1)
    return result


def format_validation_error(body: dict) -> str:
    """coglet's 422 body as one line per field: `max_new_tokens: 0 is less than the minimum of 1`."""
    details = body.get("detail")
    if isinstance(details, list):
        return "; ".join(f"{d.get('loc', ['?'])[-1]}: {d.get('msg')}" for d in details)
    return str(details or body)


class CogServer:
    def __init__(self, runner: str, port: int | None = None, host: str = "127.0.0.1",
                 env: dict | None = None, setup_timeout: float = 900, root: Path | None = None):
        self.runner = runner
        self.root = Path(root or project_root())
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host if host != '0.0.0.0' else '127.0.0.1'}:{self.port}"
        self.extra_env = env or {}
        self.setup_timeout = setup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="cogkit-server-"))
        self.log_path = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.started_at = self.ready_at = None
        self.ready_setup_logs: list[str] = []  # setup's output as /health-check reported it at READY
        self.schema: dict = {}
        self.http = requests.Session()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> "CogServer":
        self.schema = write_schema(self.runner, self.workdir, self.root)
        venv_bin = str(Path(sys.executable).parent)
        env = {**os.environ, **self.extra_env}
        # coglet starts its worker with the first `python` on PATH: make it this interpreter.
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        # cogkit/startup: its sitecustomize imports cog's SDK lighter in both of coglet's processes.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), str(STARTUP_DIR), env.get("PYTHONPATH")]))
        env["PORT"] = str(self.port)
        env["COG_PREDICT_TYPE_STUB"] = str(self.root / self.runner)
        env["COG_SETUP_TIMEOUT"] = str(int(self.setup_timeout))
        if "COG_MAX_CONCURRENCY" not in env:  # an explicit setting wins over the overlay
            env["COG_MAX_CONCURRENCY"] = str(runner_concurrency(self.runner, self.root, env.get("COGKIT_MODEL")))
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log:
            self.started_at = time.monotonic()
            # cogkit.lifeline: the server dies with this process (the kernel sends SIGKILL when the
            # thread that starts it ends, so start servers from a thread that outlives them)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cogkit.lifeline", str(os.getpid()), "cog.server.http", "--host", self.host],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self

    def health(self) -> dict | None:
        try:
            return self.http.get(f"{self.url}/health-check", timeout=2).json()
        except (requests.ConnectionError, requests.Timeout, ValueError):
            return None

    def setup_log_lines(self) -> list[str]:
        """What the predictor's setup printed so far: coglet's JSON log, plus any line that only the
        health check's setup logs had when the server became READY."""
        lines = self._logged_setup_lines()
        return lines + [line for line in self.ready_setup_logs if line not in lines]

    def _logged_setup_lines(self) -> list[str]:
        lines = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return lines
        for raw in text.splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                lines.append(raw)
                continue
            fields = entry.get("fields", {})
            # Setup output is logged under coglet::setup; a line that reaches coglet just after setup
            # returned can land under another target, but only prediction output has a prediction_id.
            if entry.get("target") == "coglet::setup" or (
                    fields.get("source") in ("Stdout", "Stderr") and "prediction_id" not in fields):
                lines.append(fields.get("message", ""))
        return lines

    def _settled_setup_log(self, patience: float = 2.0) -> list[str]:
        """The setup log once it stops growing: the traceback may land just after the status flips."""
        lines, deadline = self.setup_log_lines(), time.monotonic() + patience
        while time.monotonic() < deadline:
            time.sleep(0.1)
            newer = self.setup_log_lines()
            if newer == lines:
                break
            lines = newer
        return lines

    def wait_ready(self, on_progress: Callable[[float, str], None] | None = None, poll: float = 0.1) -> dict:
        """Block until READY; `poll` is the health check's interval, hence how late ready_at may be."""
        started = time.monotonic()
        deadline = started + self.setup_timeout + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"the server exited with code {self.proc.returncode} during setup:\n"
                                  + self.log_path.read_text(errors="replace")[-4000:])
            health = self.health()
            status = (health or {}).get("status")
            if status in ("READY", "BUSY"):
                self.ready_at = time.monotonic()
                self.ready_setup_logs = [
                    line.removeprefix("[coglet::setup] ")
                    for line in ((health.get("setup") or {}).get("logs") or "").splitlines()
                    if line.startswith("[coglet::setup] ")]
                # coglet may log setup's last lines a moment after READY; let them land before anyone
                # reads setup_log_lines() (the server is already serving meanwhile).
                self._settled_setup_log(patience=1.0)
                return health
            if status in ("SETUP_FAILED", "DEFUNCT", "UNHEALTHY"):
                logs = (health.get("setup") or {}).get("logs") or ""
                user_lines = "\n".join(self._settled_setup_log()) or logs
                raise ServerError(f"setup failed ({status}):\n{user_lines.strip()}")
            if on_progress:
                last = next((line for line in reversed(self.setup_log_lines()) if line.strip()), "")
                on_progress(time.monotonic() - started, last)
            time.sleep(poll)
        raise ServerError(f"setup did not finish within {self.setup_timeout:.0f}s")

    def predict(self, inputs: dict, prediction_id: str | None = None) -> dict:
        """A synchronous prediction; returns coglet's response body."""
        body = {"input": inputs, **({"id": prediction_id} if prediction_id else {})}
        resp = self._post_prediction(body)
        self._raise_for_input(resp)
        return clean_error(resp.json())

    def stream(self, inputs: dict, prediction_id: str | None = None) -> Iterator[tuple[str, dict]]:
        """Server-sent events of one prediction: (`start`|`output`|`log`|`metric`|`completed`, data)."""
        body = {"input": inputs, **({"id": prediction_id} if prediction_id else {})}
        # A connection of its own: on a reused one coglet's first events reached the client ~40 ms late
        # (its small writes wait for the client's delayed ACK), which added 40 ms to the time to first
        # token of every prediction after the first (measured: first output 44 ms against 1.2 ms).
        headers = {"Accept": "text/event-stream", "Connection": "close"}
        with self._post_prediction(body, stream=True, headers=headers) as resp:
            self._raise_for_input(resp)
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                yield "completed", clean_error(resp.json())
                return
            resp.encoding = "utf-8"  # SSE is always UTF-8; requests would guess Latin-1
            for event, data in parse_sse(resp.iter_lines(decode_unicode=True)):
                yield event, clean_error(data) if event == "completed" else data

    def cancel(self, prediction_id: str) -> int:
        return self.http.post(f"{self.url}/predictions/{prediction_id}/cancel").status_code

    def _post_prediction(self, body: dict, busy_wait: float = 30, **kwargs) -> requests.Response:
        """POST /predictions, waiting while the single slot is still busy (coglet answers 409,
        also for a moment after the previous prediction has returned)."""
        deadline = time.monotonic() + busy_wait
        while True:
            resp = self.http.post(f"{self.url}/predictions", json=body, **kwargs)
            if resp.status_code != 409 or time.monotonic() > deadline:
                return resp
            resp.close()
            time.sleep(0.02)

    @staticmethod
    def _raise_for_input(resp: requests.Response) -> None:
        if resp.status_code == 422:
            raise ServerError(f"invalid input: {format_validation_error(resp.json())}")
        if resp.status_code >= 400:
            raise ServerError(f"the server answered {resp.status_code}: {resp.text.strip()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.http.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
