"""A local stand-in for the payment provider: it builds webhook events and signs them the way the
provider does (Stripe's scheme: ``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``).

Written from the provider's description, independently of ``app.domains.orders.payments`` (which
verifies), so a test that passes shows the two agree on the scheme, not that one function agrees
with itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal

HEADER = "Payment-Signature"
TEST_SECRET = "whsec_test_" + "k" * 8 + "0123456789abcdef"


def event_body(
    order_id: int,
    amount: Decimal | str,
    currency: str = "EUR",
    *,
    event_id: str | None = None,
    type: str = "payment.succeeded",
    payment_id: str | None = None,
) -> bytes:
    """The JSON body of one provider event (amounts as exact decimal strings); a new payment id
    unless ``payment_id`` is given (the provider's redelivery of a payment under a new event id)."""
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "type": type,
        "created": int(time.time()),
        "data": {
            "order_id": order_id,
            "amount": f"{Decimal(amount):.2f}",
            "currency": currency,
            "payment_id": payment_id or f"pay_{uuid.uuid4().hex[:16]}",
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


def signature(body: bytes, secret: str = TEST_SECRET, *, timestamp: int | None = None) -> str:
    """The ``Payment-Signature`` value the provider sends with ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


@dataclass(frozen=True)
class Delivery:
    body: bytes
    headers: dict[str, str]


def delivery(body: bytes, secret: str = TEST_SECRET, *, timestamp: int | None = None) -> Delivery:
    """A signed webhook request: POST ``body`` with these headers to ``/api/payments/webhook``."""
    return Delivery(
        body, {HEADER: signature(body, secret, timestamp=timestamp), "Content-Type": "application/json"}
    )
