"""Signed stream URLs: `urls.stream` of a prediction works as handed out, without the bearer token.

Replicate's clients read `urls.stream` as given: the JavaScript client (and a browser's EventSource)
sends only `Accept: text/event-stream`. So the URL carries its own proof, like the gateway's file
download links: `/v1/predictions/{id}/stream?expiry=<unix time>&signature=<HMAC>`. The HMAC covers
the prediction id and the expiry, under a key only the gateway knows, so a link opens that one
prediction's stream until it expires and nothing else. The plain route still takes the token.
"""

import base64
import hashlib
import hmac
import time
import urllib.parse

LIFETIME = 24 * 3600  # seconds a stream link stays valid after the prediction is created


class StreamSigner:
    def __init__(self, key: bytes, public_url: str, lifetime: float = LIFETIME):
        self.key = key
        self.public_url = public_url.rstrip("/")
        self.lifetime = lifetime

    def signature(self, prediction_id: str, expiry: int) -> str:
        # "stream" keeps a file link's signature (same shape, other key) from ever passing here
        message = f"stream {prediction_id} {expiry}".encode()
        digest = hmac.new(self.key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def url(self, prediction_id: str, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.lifetime)
        query = urllib.parse.urlencode({"expiry": expiry, "signature": self.signature(prediction_id, expiry)})
        return f"{self.public_url}/v1/predictions/{prediction_id}/stream?{query}"

    def check(self, prediction_id: str, expiry: str | None, signature: str | None,
              now: float | None = None) -> str | None:
        """Why a stream link is not valid for this prediction, or None when it is."""
        try:
            expires = int(expiry or "")
        except ValueError:
            return "expiry must be a Unix timestamp"
        if not hmac.compare_digest(self.signature(prediction_id, expires), signature or ""):
            return "the signature does not match this prediction's stream"
        if expires < (time.time() if now is None else now):
            return "the stream link has expired"
        return None
