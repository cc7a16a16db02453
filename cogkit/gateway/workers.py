"""One real coglet server per model, started on first use, fed up to its concurrency.

coglet runs at most COG_MAX_CONCURRENCY predictions at once (1 unless the model's cog.yaml overlay
sets `concurrency.max`) and answers 409 beyond that, so each model has a queue and as many threads
("slots") as its server takes predictions at once; each slot takes the next prediction from the
queue, in order, and callers never see the 409. When the server dies (or coglet reports UNHEALTHY
after its worker died) the predictions running on it fail with a reason and the next one starts a
fresh server.
"""

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter

from cogkit.server import CogServer, ServerError

log = logging.getLogger("cogkit.gateway")


class PredictionSink(Protocol):
    """What a worker reports back to the gateway; every call comes from the worker's thread."""

    def is_canceled(self, prediction_id: str) -> bool: ...
    def resolve_inputs(self, inputs: dict) -> dict: ...
    def on_start(self, prediction_id: str) -> None: ...
    def on_output(self, prediction_id: str, chunk) -> None: ...
    def on_log(self, prediction_id: str, text: str) -> None: ...
    def on_done(self, prediction_id: str, result: dict) -> None: ...


@dataclass
class Job:
    prediction_id: str
    inputs: dict
    queued_at: float = field(default_factory=time.monotonic)


class ModelWorker:
    def __init__(self, model: str, runner: str, sink: PredictionSink, env: dict | None = None,
                 setup_timeout: float = 900, concurrency: int = 1):
        self.model = model
        self.runner = runner
        self.sink = sink
        self.concurrency = concurrency
        # the server must take as many predictions at once as the slots hand it
        self.env = {**(env or {}), "COG_MAX_CONCURRENCY": str(concurrency)}
        self.setup_timeout = setup_timeout
        self.jobs: "queue.Queue[Job | None]" = queue.Queue()
        self.server: CogServer | None = None
        self.running: set[str] = set()  # prediction ids handed to the server and not yet done
        self.restarts = 0
        self.stopping = False
        self.server_lock = threading.Lock()  # guards self.server: slots start servers, stop() kills them
        self.boot_lock = threading.Lock()  # one slot boots the server, the others wait for it
        self.threads = [threading.Thread(target=self._loop, name=f"worker-{model}-{i}", daemon=True)
                        for i in range(concurrency)]
        for thread in self.threads:
            thread.start()

    @property
    def current(self) -> str | None:
        """A prediction running now (the only one when the concurrency is 1), or None."""
        return min(self.running, default=None)

    # ------------------------------------------------------------ called from the gateway

    def submit(self, prediction_id: str, inputs: dict) -> None:
        self.jobs.put(Job(prediction_id, inputs))

    def cancel_running(self, prediction_id: str) -> bool:
        """Ask coglet to cancel the prediction if it is the one running now."""
        server = self.server
        if prediction_id not in self.running or server is None:
            return False
        try:
            # coglet answers 404 until it has the prediction (the POST may still be on its way):
            # then the gateway records the cancel and _stream passes it on at the first event
            return 200 <= server.cancel(prediction_id) < 300
        except requests.RequestException:
            return False

    def info(self) -> dict:
        server = self.server
        alive = bool(server and server.proc and server.proc.poll() is None)
        return {"model": self.model, "running": alive, "pid": server.proc.pid if alive else None,
                "url": server.url if alive else None, "queued": self.jobs.qsize(),
                "concurrency": self.concurrency, "current": self.current,
                "predictions": sorted(self.running), "restarts": self.restarts}

    def stop(self) -> None:
        """Kill the model server (breaking off a running prediction) and end the thread."""
        self.stopping = True
        for _ in self.threads:
            self.jobs.put(None)
        self._stop_server()
        for thread in self.threads:
            thread.join(timeout=15)
        self._stop_server()

    # ------------------------------------------------------------ the worker thread

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None or self.stopping:
                return
            if self.sink.is_canceled(job.prediction_id):
                continue
            try:
                self._run(job)
            except Exception as e:  # the gateway must keep serving whatever one prediction did
                log.exception("prediction %s failed in the gateway", job.prediction_id)
                self.sink.on_done(job.prediction_id, {"status": "failed", "error": f"gateway error: {e}"})
            finally:
                self.running.discard(job.prediction_id)

    def _ensure_server(self) -> CogServer:
        with self.boot_lock:
            if self.server and self.server.proc.poll() is None:
                return self.server
            if self.server:
                self._stop_server()
                self.restarts += 1
            with self.server_lock:
                if self.stopping:
                    raise ServerError("the gateway is shutting down")
                log.info("starting the %s server (%d at once)", self.model, self.concurrency)
                server = self.server = CogServer(self.runner, env={**self.env, "COGKIT_MODEL": self.model},
                                                 setup_timeout=self.setup_timeout).start()
            # a pooled connection per slot (requests keeps 10 per host by default)
            server.http.mount("http://", HTTPAdapter(pool_maxsize=self.concurrency + 2))
            try:
                server.wait_ready()
            except BaseException:
                self._stop_server()
                raise
            return server

    def _stop_server(self, only: CogServer | None = None) -> bool:
        """Stop the server (only if it is still `only`, when given); True when one was stopped."""
        with self.server_lock:
            if only is not None and self.server is not only:
                return False  # another slot has already replaced it
            server, self.server = self.server, None
        if server:
            server.stop()
        return server is not None

    def _run(self, job: Job) -> None:
        pid = job.prediction_id
        self.running.add(pid)
        try:
            server = self._ensure_server()
        except ServerError as e:
            self.sink.on_done(pid, {"status": "failed", "error": f"the {self.model} model failed to start: {e}"})
            return
        if self.sink.is_canceled(pid):  # canceled while the server was booting
            return
        try:
            inputs = self.sink.resolve_inputs(job.inputs)
        except OSError as e:
            self.sink.on_done(pid, {"status": "failed", "error": f"an input file could not be read: {e}"})
            return
        self.sink.on_start(pid)
        result = None
        try:
            if not supports_streaming(server.schema):  # coglet answers 406 to SSE for these
                result = server.predict(inputs, pid)
            else:
                result = self._stream(server, pid, inputs)
        except ServerError as e:  # 422 and other refusals: the prediction's own fault
            if self._server_crashed(server) is None:
                self.sink.on_done(pid, {"status": "failed", "error": str(e)})
                return
        except (requests.RequestException, ValueError):
            pass  # the connection broke: decided below from the server's state
        crash = self._server_crashed(server)
        if crash:
            if self._stop_server(only=server):  # the first slot to see the crash retires the server
                self.restarts += 1  # the next prediction starts a fresh server
            error = (f"the {self.model} model's worker crashed during this prediction ({crash}); "
                     "the gateway restarts it for the next prediction")
            self.sink.on_done(pid, {"status": "failed", "error": error,
                                    **({"logs": result.get("logs")} if result else {})})
            return
        if result is None:
            self.sink.on_done(pid, {"status": "failed",
                                    "error": f"the {self.model} server closed the stream without a result"})
            return
        self.sink.on_done(pid, result)

    def _stream(self, server: CogServer, pid: str, inputs: dict) -> dict | None:
        result = None
        cancel_sent = False
        for event, data in server.stream(inputs, pid):
            if not cancel_sent and self.sink.is_canceled(pid):  # canceled before coglet knew it
                cancel_sent = True
                with contextlib.suppress(requests.RequestException):
                    server.cancel(pid)
            if event == "output":
                self.sink.on_output(pid, data.get("chunk") if isinstance(data, dict) else data)
            elif event == "log":
                self.sink.on_log(pid, log_text(data))
            elif event == "completed":
                result = data
        return result

    def _server_crashed(self, server: CogServer) -> str | None:
        """Why `server` can no longer serve, or None when it is healthy."""
        if server is not self.server:  # stopped, or already replaced after a crash
            return "the gateway is shutting down" if self.stopping else "the server was stopped"
        code = server.proc.poll()
        if code is not None:
            return f"server exit code {code}"
        health = server.health()
        status = (health or {}).get("status")
        if health is None:
            return "the server stopped answering"
        if status in ("UNHEALTHY", "DEFUNCT", "SETUP_FAILED"):
            return f"coglet reports {status}"
        return None


def supports_streaming(schema: dict) -> bool:
    return bool(schema.get("paths", {}).get("/predictions", {}).get("post", {}).get("x-cog-streaming"))


def log_text(data) -> str:
    if isinstance(data, dict):
        return str(data.get("message") or data.get("log") or data.get("data") or "")
    return str(data)
