"""Check that a webhook really comes from Replicate (or a cogkit gateway) before trusting it.

Replicate signs webhooks the Standard Webhooks way: `webhook-id`, `webhook-timestamp` and
`webhook-signature` headers, an HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed by the account's
secret (`GET /v1/webhooks/default/secret`, `whsec_...`). Use it in your own receiver:

    prediction = verify_webhook(body_bytes, request.headers, secret)  # raises InvalidWebhook

Verify the raw body bytes, before any JSON parsing re-serialises them.
"""

from collections.abc import Mapping

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

DEFAULT_TOLERANCE = 300  # seconds; also the standardwebhooks package's own window


class InvalidWebhook(Exception):
    """The webhook's signature, timestamp or headers do not check out; do not act on it."""


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str,
                   tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> dict:
    """The verified JSON payload (the prediction), or InvalidWebhook saying why not.

    `tolerance` bounds how old (or how far in the future) `webhook-timestamp` may be, which stops
    a captured webhook from being replayed later."""
    import time

    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not lowered.get(h)]
    if missing:
        raise InvalidWebhook(f"missing header {missing[0]}")
    try:
        sent = float(lowered["webhook-timestamp"])
    except ValueError:
        raise InvalidWebhook(f"webhook-timestamp {lowered['webhook-timestamp']!r} is not a Unix time") from None
    skew = (time.time() if now is None else now) - sent
    if abs(skew) > tolerance:
        raise InvalidWebhook(f"webhook-timestamp is {abs(skew):.0f}s {'old' if skew > 0 else 'in the future'}; "
                             f"the tolerance is {tolerance:.0f}s")
    try:
        signer = Webhook(secret)
    except Exception as e:
        raise InvalidWebhook(f"the webhook secret is not a valid whsec_ secret: {e}") from None
    # standardwebhooks checks the signature (and its own fixed 5-minute window, so the explicit
    # tolerance above is what decides for shorter windows)
    try:
        return signer.verify(body, {**lowered, "webhook-timestamp": lowered["webhook-timestamp"]}) \
            if abs(skew) <= DEFAULT_TOLERANCE else _verify_signature_only(signer, body, lowered)
    except WebhookVerificationError as e:
        raise InvalidWebhook(f"signature check failed: {e}") from None
    except ValueError as e:  # malformed signature header or body
        raise InvalidWebhook(f"malformed webhook: {e}") from None


def _verify_signature_only(signer: Webhook, body: bytes | str, headers: dict) -> dict:
    """For tolerances above the package's fixed 5 minutes: the same HMAC check, our own time window."""
    import base64
    import hmac
    import json
    from datetime import datetime, timezone

    text = body if isinstance(body, str) else body.decode()
    stamp = datetime.fromtimestamp(float(headers["webhook-timestamp"]), tz=timezone.utc)
    expected = base64.b64decode(signer.sign(headers["webhook-id"], stamp, text).split(",", 1)[1])
    for versioned in headers["webhook-signature"].split(" "):
        version, _, signature = versioned.partition(",")
        if version == "v1" and hmac.compare_digest(expected, base64.b64decode(signature)):
            return json.loads(text)
    raise WebhookVerificationError("No matching signature found")
