"""The gateway's state: models, predictions (live and stored), files and webhooks.

Request handlers run on the event loop; model workers report from their own threads. Changes to a
live prediction happen under one lock and wake the loop's waiters (Prefer: wait, SSE streams).
"""

import asyncio
import copy
import hashlib
import json
import logging
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import jsonschema

from cogkit.gateway import validation
from cogkit.gateway.errors import GatewayError  # noqa: F401 - also imported from here
from cogkit.gateway.files import OWNER, FileStore, iso
from cogkit.gateway.store import TERMINAL, Store
from cogkit.gateway.stream_urls import StreamSigner
from cogkit.gateway.webhooks import WebhookSender, new_secret
from cogkit.gateway.workers import ModelWorker

log = logging.getLogger("cogkit.gateway")

WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
WEBHOOK_THROTTLE = 0.5  # seconds between `output`/`logs` webhooks of one prediction, as on Replicate
KEEP_LIVE = 120  # seconds a finished prediction stays in memory for late stream readers


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


def new_prediction_id() -> str:
    # Replicate's ids are 26 lowercase base32 characters
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "".join(secrets.choice(alphabet) for _ in range(26))


DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float:
    """`Cancel-After` values: Go-style durations (`5m`, `1h30m`, `90s`, `1.5s`) or bare seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if not text or DURATION.sub("", text):
        raise GatewayError(400, "Invalid Cancel-After header",
                           f"Cancel-After: {text!r} is not a duration like 30s, 5m or 1h30m")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[unit] for n, unit in DURATION.findall(text))


def parse_prefer_wait(header: str | None) -> float | None:
    """Seconds to hold the response for `Prefer: wait` / `wait=N` (1-60), or None."""
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() != "wait":
            continue
        if not value:
            return 60.0
        try:
            seconds = int(value)
        except ValueError:
            raise GatewayError(400, "Invalid Prefer header", f"Prefer: wait={value!r} must be an integer") from None
        if not 1 <= seconds <= 60:
            raise GatewayError(400, "Invalid Prefer header", f"Prefer: wait={seconds} must be between 1 and 60")
        return float(seconds)
    return None


@dataclass
class ModelEntry:
    name: str  # the MODELS key; the API calls it local/<name>
    runner: str
    summary: str
    hardware: str
    schema: dict
    version_id: str
    created_at: str
    validator: jsonschema.protocols.Validator
    iterator_output: bool
    demo_input: dict
    concurrency: int = 1  # predictions its server runs at once (`concurrency.max` in its overlay)

    @property
    def full_name(self) -> str:
        return f"{OWNER}/{self.name}"


def allow_nulls(schema):
    """OpenAPI 3.0's `nullable: true` as JSON Schema's `null` type, so optional inputs may be null."""
    if isinstance(schema, list):
        return [allow_nulls(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: allow_nulls(v) for k, v in schema.items()}
    if out.pop("nullable", False):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]  # keeps bound errors precise, unlike anyOf
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def make_model_entry(spec, schema: dict, created_at: str, concurrency: int = 1) -> ModelEntry:
    components = schema["components"]["schemas"]
    input_schema = allow_nulls({**components["Input"], "components": schema["components"]})
    validator_cls = jsonschema.validators.validator_for(input_schema, default=jsonschema.Draft202012Validator)
    output = components.get("Output", {})
    digest = hashlib.sha256(json.dumps([spec.runner, schema], sort_keys=True).encode()).hexdigest()
    return ModelEntry(
        name=spec.name, runner=spec.runner, summary=spec.summary, hardware=spec.hardware, schema=schema,
        version_id=digest, created_at=created_at, validator=validator_cls(input_schema),
        iterator_output=output.get("type") == "array" and output.get("x-cog-array-type") == "iterator",
        demo_input=dict(spec.demo_input), concurrency=concurrency)


def is_cancel_race(error: str | None) -> bool:
    """Whether a failed prediction's error is coglet's own cancellation exception."""
    return bool(error) and "CancelationException" in error


@dataclass
class Live:
    """A prediction that is queued or running (or just finished) in this gateway process."""
    record: dict
    events: list = field(default_factory=list)  # SSE (event, data) in order; ids are the indexes
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    file_urls: dict = field(default_factory=dict)  # data: URI -> stored file URL
    last_progress_webhook: float = 0.0
    output_events: int = 0
    worker: object = None  # what runs it: the model's worker, or a deployment's pool
    cancel_requested: bool = False  # a client or Cancel-After asked to cancel it while it ran


class Gateway:
    def __init__(self, data_dir: Path, public_url: str, models: dict[str, ModelEntry],
                 worker_env: dict | None = None, setup_timeout: float = 900, page_size: int = 100,
                 max_queue: int = 1000):
        self.data_dir = Path(data_dir)
        self.public_url = public_url.rstrip("/")
        self.models = models
        self.page_size = page_size
        self.max_queue = max_queue
        self.store = Store(self.data_dir / "gateway.db")
        self.webhook_secret = self.store.meta("webhook_secret", new_secret)
        signing_key = bytes.fromhex(self.store.meta("files_signing_key", lambda: secrets.token_hex(32)))
        self.files = FileStore(self.data_dir / "files", self.store, self.public_url, signing_key)
        stream_key = bytes.fromhex(self.store.meta("stream_signing_key", lambda: secrets.token_hex(32)))
        self.stream_urls = StreamSigner(stream_key, self.public_url)
        self.webhooks = WebhookSender(self.webhook_secret)
        self.live: dict[str, Live] = {}
        self.lock = threading.RLock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.workers = {name: ModelWorker(name, m.runner, self, env=worker_env, setup_timeout=setup_timeout,
                                          concurrency=m.concurrency)
                        for name, m in models.items()}
        self.setup_timeout, self.worker_env = setup_timeout, worker_env
        self.pools: dict = {}  # deployment pools by owner/name (cogkit.gateway.deployments)
        self.interrupted = self._fail_interrupted("the gateway restarted before this prediction finished")

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def close(self) -> None:
        # record the outcome first, so what the dying model servers report afterwards is ignored
        with self.lock:
            unfinished = [live.record["id"] for live in self.live.values() if live.record["status"] not in TERMINAL]
        for pid in unfinished:
            self._finish(pid, {"status": "failed", "error": "interrupted: the gateway shut down before this "
                                                           "prediction finished"})
        for worker in [*self.workers.values(), *self.pools.values()]:
            worker.stop()
        self.webhooks.close()
        self.store.close()

    # ------------------------------------------------------------ models

    def model(self, owner: str, name: str) -> ModelEntry:
        if owner != OWNER or name not in self.models:
            known = ", ".join(m.full_name for m in self.models.values())
            raise GatewayError(404, "Model not found",
                               f"model {owner}/{name} does not exist on this gateway; it serves: {known}")
        return self.models[name]

    def resolve_version(self, version: str) -> ModelEntry:
        """`owner/name`, `owner/name:<id>` or a bare version id, as POST /v1/predictions accepts."""
        if not isinstance(version, str) or not version:
            raise GatewayError(422, "Invalid version", "version: expected owner/name, owner/name:<id> or <id>")
        ref, _, version_id = version.partition(":")
        if "/" in ref:
            owner, _, name = ref.partition("/")
            entry = self.model(owner, name)
            if version_id and version_id != entry.version_id:
                raise GatewayError(404, "Version not found",
                                   f"version {version_id} of {entry.full_name} does not exist; "
                                   f"the current one is {entry.version_id}")
            return entry
        for entry in self.models.values():
            if entry.version_id == version:
                return entry
        raise GatewayError(404, "Version not found", f"no model on this gateway has version {version}")

    def version_json(self, entry: ModelEntry) -> dict:
        return {"id": entry.version_id, "created_at": entry.created_at, "cog_version": "0.23.1",
                "openapi_schema": entry.schema}

    def model_json(self, entry: ModelEntry) -> dict:
        return {
            "url": f"{self.public_url}/v1/models/{entry.full_name}", "owner": OWNER, "name": entry.name,
            "description": entry.summary, "visibility": "private", "github_url": None, "paper_url": None,
            "license_url": None, "run_count": 0, "cover_image_url": None,
            "default_example": None, "latest_version": self.version_json(entry),
            # not in Replicate's model object: lets `cogkit call` price a prediction
            "hardware": entry.hardware,
        }

    # ------------------------------------------------------------ predictions: create, read, cancel

    def create(self, entry: ModelEntry, body: dict, cancel_after: str | None, worker=None,
               extra: dict | None = None) -> dict:
        """A new prediction, queued on `worker` (default: the model's own); `extra` fields (e.g.
        `deployment`) go into its record."""
        worker = worker or self.workers[entry.name]
        inputs = body.get("input")
        if not isinstance(inputs, dict):
            raise GatewayError(422, "Invalid input", "input: required, and must be an object")
        inputs = validation.prepare_inputs(entry, inputs)
        self._validate_input(entry, inputs)
        webhook = body.get("webhook")
        if webhook is not None and (not isinstance(webhook, str) or not re.match(r"https?://", webhook)):
            raise GatewayError(422, "Invalid webhook", "webhook: must be an http(s) URL")
        events = body.get("webhook_events_filter") or list(WEBHOOK_EVENTS)
        bad = [e for e in events if e not in WEBHOOK_EVENTS] if isinstance(events, list) else [events]
        if bad:
            raise GatewayError(422, "Invalid webhook_events_filter",
                               f"webhook_events_filter: {bad[0]!r} is not one of {', '.join(WEBHOOK_EVENTS)}")
        deadline = parse_duration(cancel_after) if cancel_after else None
        waiting = worker.jobs.qsize()
        if waiting >= self.max_queue:
            raise GatewayError(429, "Too Many Requests",
                               f"{waiting} predictions are already queued for {entry.full_name}; retry later")
        pid = new_prediction_id()
        base = f"{self.public_url}/v1/predictions/{pid}"
        record = {
            "id": pid, "model": entry.full_name, "version": entry.version_id, "input": inputs,
            "logs": "", "output": None, "data_removed": False, "error": None, "status": "starting",
            "source": "api", "created_at": now_iso(), "started_at": None, "completed_at": None,
            "urls": {"get": base, "cancel": f"{base}/cancel", "stream": self.stream_urls.url(pid),
                     "web": base},
            "metrics": {}, **(extra or {}),
        }
        if webhook:
            record["webhook"] = webhook
            record["webhook_events_filter"] = events
        with self.lock:
            self.live[pid] = Live(record=record, worker=worker)
            self.store.save_prediction(record)
        if deadline is not None and self.loop:
            self.loop.call_later(deadline, self._deadline_reached, pid)
        worker.submit(pid, inputs)
        return self.snapshot(pid)

    def _validate_input(self, entry: ModelEntry, inputs: dict) -> None:
        errors = sorted(entry.validator.iter_errors(inputs), key=lambda e: list(e.path))
        if errors:
            problems = []
            for e in errors:
                where = ".".join(str(p) for p in e.path)
                if e.validator == "required":
                    problems.append(e.message)
                else:
                    problems.append(f"{where or 'input'}: {e.message}")
            raise GatewayError(422, "Input validation failed", "; ".join(problems))

    def resolve_inputs(self, value):
        """This gateway's file URLs become data: URIs, so coglet reads them without a token or TLS.
        Called by the worker thread just before the prediction runs (it reads the files)."""
        if isinstance(value, dict):
            return {k: self.resolve_inputs(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve_inputs(v) for v in value]
        if isinstance(value, str) and (file_id := self.files.own_file_id(value)):
            return self.files.as_data_uri(file_id)
        return value

    def snapshot(self, pid: str) -> dict:
        with self.lock:
            live = self.live.get(pid)
            if live:
                return copy.deepcopy(live.record)
        record = self.store.get_prediction(pid)
        if record is None:
            raise GatewayError(404, "Prediction not found", f"prediction {pid} does not exist")
        return record

    def cancel(self, pid: str) -> dict:
        self._stop(pid, "canceled", None)
        return self.snapshot(pid)

    def _deadline_reached(self, pid: str) -> None:
        # Cancel-After: a prediction that never started is aborted, a running one canceled
        with self.lock:
            live = self.live.get(pid)
            status = live.record["status"] if live else None
        if status == "starting":
            self._stop(pid, "aborted", "the Cancel-After deadline passed before the prediction started")
        elif status == "processing":
            self._stop(pid, "canceled", None)

    def _stop(self, pid: str, status: str, error: str | None) -> None:
        self.snapshot(pid)  # 404 for an unknown id
        with self.lock:
            live = self.live.get(pid)
            if not live or live.record["status"] in TERMINAL:
                return
            worker = live.worker or self.workers[live.record["model"].split("/", 1)[1]]
            running = live.record["status"] == "processing"
            live.cancel_requested = live.cancel_requested or status == "canceled"
        if running and worker.cancel_running(pid):  # False unless it is running there now
            return  # coglet reports `canceled` through the stream
        self._finish(pid, {"status": status, "error": error})

    # ------------------------------------------------------------ waiting (event loop side)

    async def wait(self, pid: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                live = self.live.get(pid)
                if not live or live.record["status"] in TERMINAL:
                    break
                wake = live.wake
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(wake.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self.snapshot(pid)

    async def stream_events(self, pid: str, after: int = -1):
        """(id, event, data) from index after+1 on, following a live prediction until `done`."""
        with self.lock:
            live = self.live.get(pid)
        if live is None:
            for i, (event, data) in enumerate(events_of_finished(self.snapshot(pid))):
                if i > after:
                    yield i, event, data
            return
        index = after + 1
        while True:
            with self.lock:
                batch = live.events[index:]
                wake = live.wake
            for event, data in batch:
                yield index, event, data
                index += 1
                if event == "done":
                    return
            if not batch:
                try:
                    await asyncio.wait_for(wake.wait(), 15)
                except asyncio.TimeoutError:
                    yield None, None, None  # a keep-alive comment

    def _notify(self, live: Live) -> None:
        """Wake everyone waiting on this prediction; safe from any thread."""
        def wake():
            old, live.wake = live.wake, asyncio.Event()
            old.set()
        if self.loop and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(wake)

    # ------------------------------------------------------------ worker callbacks (worker threads)

    def is_canceled(self, pid: str) -> bool:
        with self.lock:
            live = self.live.get(pid)
            return live is None or live.record["status"] in TERMINAL

    def on_start(self, pid: str) -> None:
        with self.lock:
            live = self.live[pid]
            if live.record["status"] in TERMINAL:
                return
            live.record["status"] = "processing"
            live.record["started_at"] = now_iso()
            if self.models[live.record["model"].split("/", 1)[1]].iterator_output:
                live.record["output"] = []
            record = copy.deepcopy(live.record)
            self.store.save_prediction(record)
        self._webhook(record, "start")
        self._notify(live)

    def on_output(self, pid: str, chunk) -> None:
        with self.lock:
            live = self.live[pid]
            if live.record["status"] in TERMINAL:
                return
            chunk = self._store_files(live, chunk, f"output.{live.output_events}")
            live.output_events += 1
            if isinstance(live.record["output"], list):
                live.record["output"].append(chunk)
            else:
                live.record["output"] = chunk
            live.events.append(("output", chunk if isinstance(chunk, str) else json.dumps(chunk)))
            record = self._due_progress_webhook(live, "output")
        if record:
            self._webhook(record, "output")
        self._notify(live)

    def on_log(self, pid: str, text: str) -> None:
        if not text:
            return
        with self.lock:
            live = self.live[pid]
            if live.record["status"] in TERMINAL:
                return
            live.record["logs"] = (live.record["logs"] or "") + text
            live.events.append(("logs", text.rstrip("\n")))
            record = self._due_progress_webhook(live, "logs")
        if record:
            self._webhook(record, "logs")
        self._notify(live)

    def on_done(self, pid: str, result: dict) -> None:
        self._finish(pid, result)

    # ------------------------------------------------------------ finishing

    def _finish(self, pid: str, result: dict) -> None:
        with self.lock:
            live = self.live.get(pid)
            if live is None or live.record["status"] in TERMINAL:
                return
            record = live.record
            status = result.get("status") or "failed"
            if status == "failed" and live.cancel_requested and is_cancel_race(result.get("error")):
                # coglet reports a cancel that lands while it hands an async run() its coroutine as a
                # failure ("Failed to submit coroutine: CancelationException"); the client asked to cancel.
                status, result = "canceled", {**result, "error": None}
            record["status"] = status
            if "output" in result and result["output"] is not None:
                record["output"] = self._store_files(live, result["output"], "output")
            if result.get("logs") and not record["logs"]:
                record["logs"] = result["logs"]
            record["error"] = result.get("error") or (None if status == "succeeded" else record.get("error"))
            if status == "failed" and not record["error"]:
                record["error"] = "the prediction failed without an error message"
            record["completed_at"] = now_iso()
            metrics = dict(result.get("metrics") or {})
            if record["started_at"] and "predict_time" not in metrics:
                metrics["predict_time"] = seconds_between(record["started_at"], record["completed_at"])
            metrics["total_time"] = seconds_between(record["created_at"], record["completed_at"])
            record["metrics"] = metrics
            live.events.extend(self._final_events(live))
            self.store.save_prediction(record)
            final = copy.deepcopy(record)
        self._webhook(final, "completed")
        self._notify(live)
        if self.loop and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.call_later, KEEP_LIVE, self._forget, pid)

    def _final_events(self, live: Live) -> list:
        record = live.record
        events = []
        if record["status"] == "succeeded" and live.output_events == 0 and record["output"] is not None:
            events += output_events_of(record["output"])
        if record["status"] == "failed":
            events += [("error", record["error"] or "failed"), ("done", json.dumps({"reason": "error"}))]
        elif record["status"] in ("canceled", "aborted"):
            events.append(("done", json.dumps({"reason": "canceled"})))
        else:
            events.append(("done", "{}"))
        return events

    def _forget(self, pid: str) -> None:
        with self.lock:
            self.live.pop(pid, None)

    def _store_files(self, live: Live, value, stem: str):
        """data: URIs from coglet become files of this gateway, served by (signed) URL."""
        if isinstance(value, str) and value.startswith("data:"):
            if value not in live.file_urls:
                record = self.files.add_data_uri(value, stem)
                live.file_urls[value] = self.files.download_url(record["id"])
            return live.file_urls[value]
        if isinstance(value, list):
            return [self._store_files(live, v, f"{stem}.{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self._store_files(live, v, f"{stem}.{k}") for k, v in value.items()}
        return value

    def _fail_interrupted(self, reason: str) -> int:
        unfinished = self.store.unfinished_predictions()
        for record in unfinished:
            was = record["status"]
            record.update(status="failed", error=f"interrupted: {reason} (it was {was})",
                          completed_at=now_iso())
            self.store.save_prediction(record)
            self._webhook(record, "completed")
        return len(unfinished)

    # ------------------------------------------------------------ webhooks

    def _due_progress_webhook(self, live: Live, event: str) -> dict | None:
        """A copy of the record when an output/logs webhook is due (at most one per 0.5 s)."""
        if not live.record.get("webhook") or event not in live.record.get("webhook_events_filter", ()):
            return None
        now = time.monotonic()
        if now - live.last_progress_webhook < WEBHOOK_THROTTLE:
            return None
        live.last_progress_webhook = now
        return copy.deepcopy(live.record)

    def _webhook(self, record: dict, event: str) -> None:
        url = record.get("webhook")
        if url and event in record.get("webhook_events_filter", WEBHOOK_EVENTS):
            self.webhooks.send(url, record, terminal=(event == "completed"))

    # ------------------------------------------------------------ listing

    def list_page(self, cursor: str | None, created_after: str | None, created_before: str | None) -> dict:
        """A page of GET /v1/predictions. Cursors are `o<seq>` (older than) and `n<seq>` (newer than)."""
        before = after = None
        if cursor:
            kind, number = cursor[:1], cursor[1:]
            if kind not in ("o", "n") or not number.isdigit():
                raise GatewayError(400, "Invalid cursor", f"cursor {cursor!r} is not one this gateway made")
            before, after = (int(number), None) if kind == "o" else (None, int(number))
        rows, older, newer = self.store.list_predictions(self.page_size, before, after,
                                                         created_after, created_before)
        results = []
        with self.lock:
            for _, record in rows:
                live = self.live.get(record["id"])
                results.append(copy.deepcopy(live.record) if live else record)
        extra = "".join(f"&{k}={urllib.parse.quote(v)}" for k, v in (("created_after", created_after),
                                                                      ("created_before", created_before)) if v)
        link = f"{self.public_url}/v1/predictions?cursor="
        return {"next": f"{link}o{rows[-1][0]}{extra}" if older else None,
                "previous": f"{link}n{rows[0][0]}{extra}" if newer else None,
                "results": results}


def seconds_between(start: str, end: str) -> float:
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return round((parse(end) - parse(start)).total_seconds(), 3)


def output_events_of(output) -> list:
    items = output if isinstance(output, list) else [output]
    return [("output", item if isinstance(item, str) else json.dumps(item)) for item in items]


def events_of_finished(record: dict) -> list:
    """The SSE events a stream of an already finished prediction replays."""
    events = []
    if record.get("output") is not None:
        events += output_events_of(record["output"])
    status = record["status"]
    if status == "failed":
        events += [("error", record.get("error") or "failed"), ("done", json.dumps({"reason": "error"}))]
    elif status in ("canceled", "aborted"):
        events.append(("done", json.dumps({"reason": "canceled"})))
    elif status == "succeeded":
        events.append(("done", "{}"))
    return events
