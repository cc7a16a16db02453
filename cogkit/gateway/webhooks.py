"""Deliver prediction webhooks, signed the Standard Webhooks way with the gateway's secret.

Each (receiver URL, prediction) pair is a lane: its messages go out in order (a prediction's `start`
before its `completed`), one at a time, and lanes run side by side on a thread pool, so a receiver
that hangs or fails delays only its own deliveries. Only the terminal `completed` event is retried
when the receiver fails, with growing delays, as Replicate does; the others are sent once. A lane
waiting for a retry holds no thread.
"""

import base64
import collections
import heapq
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import requests
from standardwebhooks import Webhook

log = logging.getLogger("cogkit.gateway")

RETRY_DELAYS = (0.5, 1, 2, 4, 8, 16, 30)  # seconds before each further attempt of a terminal event


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(signer: Webhook, message_id: str, body: str, now: datetime | None = None) -> dict:
    now = now or datetime.now(timezone.utc)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(message_id, now, body),
    }


@dataclass
class Message:
    message_id: str
    url: str
    body: str
    terminal: bool
    attempt: int = 0


class WebhookSender:
    def __init__(self, secret: str, timeout: float = 10, max_parallel: int = 256):
        self.signer = Webhook(secret)
        self.timeout = timeout
        self.pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="webhook")
        self.sessions = threading.local()  # one requests.Session per pool thread
        self.lanes: dict[tuple[str, str], collections.deque] = {}  # (url, prediction id) -> waiting messages
        self.retries: list = []  # heap of (due, order, lane key)
        self.order = itertools.count()
        self.cv = threading.Condition()
        self.closed = False
        self.delivered = 0
        self.failed = 0
        self.timer = threading.Thread(target=self._retry_loop, name="webhook-retries", daemon=True)
        self.timer.start()

    def send(self, url: str, payload: dict, terminal: bool) -> None:
        message = Message(f"msg_{uuid.uuid4().hex}", url, json.dumps(payload), terminal)
        key = (url, str(payload.get("id")))
        with self.cv:
            if self.closed:
                return
            lane = self.lanes.get(key)
            if lane is not None:
                lane.append(message)  # its lane's thread (or retry) sends it after the earlier ones
                return
            self.lanes[key] = collections.deque([message])
        self._submit(key)

    def _submit(self, key: tuple[str, str]) -> None:
        try:
            self.pool.submit(self._drain, key)
        except RuntimeError:  # closed meanwhile: what was not sent is dropped, as on close()
            pass

    def close(self, drain: float = 5) -> None:
        """Stop after sending what is due within `drain` seconds."""
        deadline = time.monotonic() + drain
        with self.cv:
            while self.lanes and time.monotonic() < deadline and not self._only_later_retries(deadline):
                self.cv.wait(0.05)
            self.closed = True
            self.cv.notify_all()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.timer.join(timeout=1)

    def _only_later_retries(self, deadline: float) -> bool:
        waiting = {key for _, _, key in self.retries}
        return set(self.lanes) <= waiting and all(due > deadline for due, _, _ in self.retries)

    def _drain(self, key: tuple[str, str]) -> None:
        """Send a lane's messages in order until it is empty or its head waits for a retry."""
        while True:
            with self.cv:
                lane = self.lanes.get(key)
                if self.closed or not lane:
                    self.lanes.pop(key, None)
                    self.cv.notify_all()
                    return
                message = lane[0]
            ok = self._post(message)
            with self.cv:
                if ok:
                    self.delivered += 1
                elif message.terminal and message.attempt < len(RETRY_DELAYS):
                    due = time.monotonic() + RETRY_DELAYS[message.attempt]
                    message.attempt += 1
                    heapq.heappush(self.retries, (due, next(self.order), key))
                    self.cv.notify_all()
                    return  # the retry thread resubmits the lane when the delay has passed
                else:
                    self.failed += 1
                    log.warning("webhook %s to %s not delivered after %d attempts", message.message_id,
                                message.url, message.attempt + 1)
                lane.popleft()
                self.cv.notify_all()

    def _retry_loop(self) -> None:
        while True:
            with self.cv:
                while not self.closed and (not self.retries or self.retries[0][0] > time.monotonic()):
                    self.cv.wait(None if not self.retries else max(0.0, self.retries[0][0] - time.monotonic()))
                if self.closed:
                    return
                _, _, key = heapq.heappop(self.retries)
            self._submit(key)

    def _post(self, message: Message) -> bool:
        session = getattr(self.sessions, "session", None)
        if session is None:
            session = self.sessions.session = requests.Session()
        try:
            resp = session.post(message.url, data=message.body.encode(), timeout=self.timeout,
                                headers=signed_headers(self.signer, message.message_id, message.body))
            return 200 <= resp.status_code < 300
        except requests.RequestException as e:
            log.info("webhook to %s failed: %s", message.url, e)
            return False
