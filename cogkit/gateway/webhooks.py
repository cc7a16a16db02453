"""Deliver prediction webhooks, signed the Standard Webhooks way with the gateway's secret.

One thread sends in order (a prediction's `start` goes before its `completed`). Only the terminal
`completed` event is retried when the receiver fails, with growing delays, as Replicate does;
the others are sent once.
"""

import base64
import heapq
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
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


class WebhookSender:
    def __init__(self, secret: str, timeout: float = 10):
        self.signer = Webhook(secret)
        self.timeout = timeout
        self.http = requests.Session()
        self.pending: list = []  # heap of (due, order, attempt, message_id, url, body, terminal)
        self.order = itertools.count()
        self.cv = threading.Condition()
        self.closed = False
        self.delivered = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self.thread.start()

    def send(self, url: str, payload: dict, terminal: bool) -> None:
        body = json.dumps(payload)
        message_id = f"msg_{uuid.uuid4().hex}"
        with self.cv:
            heapq.heappush(self.pending, (time.monotonic(), next(self.order), 0, message_id, url, body, terminal))
            self.cv.notify()

    def close(self, drain: float = 5) -> None:
        """Stop after sending what is due within `drain` seconds."""
        deadline = time.monotonic() + drain
        with self.cv:
            while self.pending and time.monotonic() < deadline and self.pending[0][0] <= deadline:
                self.cv.wait(0.05)
            self.closed = True
            self.cv.notify()
        self.thread.join(timeout=self.timeout + 1)

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.closed and (not self.pending or self.pending[0][0] > time.monotonic()):
                    self.cv.wait(None if not self.pending else max(0.0, self.pending[0][0] - time.monotonic()))
                if self.closed:
                    return
                due, order, attempt, message_id, url, body, terminal = heapq.heappop(self.pending)
            ok = self._post(url, message_id, body)
            with self.cv:
                if ok:
                    self.delivered += 1
                elif terminal and attempt < len(RETRY_DELAYS):
                    heapq.heappush(self.pending, (time.monotonic() + RETRY_DELAYS[attempt], order, attempt + 1,
                                                  message_id, url, body, terminal))
                else:
                    self.failed += 1
                    log.warning("webhook %s to %s not delivered after %d attempts", message_id, url, attempt + 1)
                self.cv.notify_all()

    def _post(self, url: str, message_id: str, body: str) -> bool:
        try:
            resp = self.http.post(url, data=body.encode(), headers=signed_headers(self.signer, message_id, body),
                                  timeout=self.timeout)
            return 200 <= resp.status_code < 300
        except requests.RequestException as e:
            log.info("webhook to %s failed: %s", url, e)
            return False
