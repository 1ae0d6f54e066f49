"""Sign requests so the receiver can tell they come from turnout and were not altered.

The header is ``X-Turnout-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>`` is
``HMAC-SHA256(secret, f"{t}.".encode() + signed)`` in lower-case hex and ``signed`` is the
exact request body for a release POST, or the ``Idempotency-Key`` value for a probe GET
(which has no body). The timestamp lets the receiver refuse replays of old requests.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Turnout-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def signature(secret: str, timestamp: int, signed: bytes) -> str:
    """Return the value of the signature header.

    Args:
        secret: The shared key, encoded as UTF-8 for the HMAC.
        timestamp: Unix seconds, also sent as ``t``.
        signed: The request body, or the idempotency key for a probe.

    Returns:
        ``t=<timestamp>,v1=<hex digest>``.
    """
    message = f"{timestamp}.".encode() + signed
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
