"""Payment-provider webhooks: the only way an order becomes paid.

The provider signs each delivery Stripe-style: ``Payment-Signature: t=<unix seconds>,v1=<hex>``
where ``v1`` is HMAC-SHA256 of ``<t>.<raw body>`` with ``PAYMENT_WEBHOOK_SECRET`` (several ``v1``
entries are accepted while a secret is rotated). A delivery is refused (400) unless one ``v1``
matches and ``t`` is within ``PAYMENT_WEBHOOK_TOLERANCE_S`` of the server's clock; an event id is
processed once (``payment_events``), so a captured delivery replayed inside the window changes
nothing either.

Money a ``payment.succeeded`` took for an order that cannot take it is a refund due (outcomes
``refund-due``, ``expired``, ``mismatch``), and so is the payment that paid an order an administrator
cancelled afterwards (its event's ``paid`` becomes ``refund-due``; the order's history tells why): the
event keeps its payment id, amount and currency, and
administrators list the refunds due and mark each one refunded once they have returned the money
(``/api/admin/payments``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated, Literal

import msgspec

from app.core.errors import AppError
from app.core.types import Id, whole

SIGNATURE_HEADER = "Payment-Signature"
MAX_SIGNATURES = 8


class InvalidSignatureError(AppError):
    status = 400
    slug = "invalid-signature"
    title = "Invalid webhook signature"

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason
        """``missing``, ``malformed``, ``stale`` (the timestamp outside the tolerance: a clock drifting)
        or ``mismatch`` (no signature matches: a rotated secret, or a forgery): what the refusal is
        counted and warned under."""


class PaymentData(msgspec.Struct):
    """The ``data`` of a ``payment.succeeded``: strict about these fields, blind to any other (a third
    party's payload: the provider adds fields to its events as it pleases, unlike our clients' bodies,
    which forbid unknown fields)."""

    order_id: Id
    amount: Annotated[
        str, msgspec.Meta(pattern=whole(r"(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?"), examples=["12.50"])
    ]
    """A decimal string (e.g. ``"12.50"``): exact, unlike a JSON number."""
    currency: Annotated[str, msgspec.Meta(pattern=whole("[A-Z]{3}"), examples=["EUR"])]
    payment_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


EventId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=255,
        pattern=whole(r"[\x21-\x7e]+"),
        description="The provider's event id: 1 to 255 printable ASCII characters, no space",
        examples=["evt_1QxY7bL2mN3pQ4rS"],
    ),
]
"""A provider's event id as stored (``payment_events.event_id``): any printable ASCII, ``/``, ``.``
and ``..`` included, so it travels in bodies, never in a path."""


EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Created = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
PAYMENT_SUCCEEDED = "payment.succeeded"
WEBHOOK_MAX_BODY = 64 * 1024
"""The webhook's body limit (bytes): a provider's event is a few KiB, and the route is public (its
body is read and HMAC'd before anything proves the sender), so it reads far less than MAX_BODY_BYTES."""


class PaymentEventIn(msgspec.Struct):
    """One provider event's envelope, decoded leniently (the provider adds fields: Stripe's carry
    ``object``, ``api_version``, ``livemode``, ``pending_webhooks``). Its ``data`` is kept undecoded:
    only a ``payment.succeeded``'s is read (``payment_data``); any other type is ``ignored`` whatever
    its ``data`` holds, or without one."""

    id: EventId
    type: EventType
    created: Created
    data: msgspec.Raw = msgspec.Raw()

    def payment_data(self) -> PaymentData:
        """The ``data`` of a ``payment.succeeded``; ``msgspec.ValidationError`` when it has none or a
        known field is missing or malformed."""
        if not self.data:
            raise msgspec.ValidationError("Object missing required field `data`")
        try:
            return msgspec.json.decode(self.data, type=PaymentData)
        except msgspec.ValidationError as exc:  # its path, as if decoded with the envelope
            message = str(exc)
            at = message.replace(" - at `$", " - at `$.data", 1)
            raise msgspec.ValidationError(at if at != message else f"{message} - at `$.data`") from None


class PaymentEventDocumented(msgspec.Struct):
    """The webhook's body as documented (``PaymentEventIn`` decodes it): unknown fields are accepted."""

    id: EventId
    type: Annotated[
        EventType,
        msgspec.Meta(
            description=f"Only `{PAYMENT_SUCCEEDED}` is read; any other is `ignored`",
            examples=[PAYMENT_SUCCEEDED],
        ),
    ]
    created: Annotated[Created, msgspec.Meta(description="Unix seconds", examples=[1764806400])]
    data: Annotated[
        PaymentData | None,
        msgspec.Meta(description=f"Required for `{PAYMENT_SUCCEEDED}`; any other type's is not read"),
    ] = None


RefundOutcome = Literal["refund-due", "expired", "mismatch"]
"""The outcomes of a payment that took money no order keeps: it must be returned (``refund-due`` is
also what the paying event of a paid order becomes when an administrator cancels the order)."""
REFUND_OUTCOMES: frozenset[str] = frozenset(("refund-due", "expired", "mismatch"))
"""The same, at run time (and in ``sql/queries/orders.sql``, the refunds-due index's predicate)."""

Outcome = Literal["paid", "duplicate", "ignored", "refund-due", "expired", "mismatch"]


class PaymentEventOut(msgspec.Struct, frozen=True):
    """What the delivery did: ``paid``; ``duplicate`` (an event id seen before: nothing done);
    ``ignored`` (another event type, or a payment id an earlier event brought already: the same
    money, which paid its order or is a refund due once already);
    ``refund-due`` (money taken for an order that does not exist, or is cancelled, rejected,
    fulfilled or already paid by another payment: it must be returned);
    ``expired`` (the reservation had lapsed: the order expires now, or the expiry cron expired it
    already, whatever the amount; a refund is due);
    ``mismatch`` (amount or currency differ from the order: not paid; a refund is due)."""

    event_id: str
    outcome: Outcome
    order_id: int | None = None


def verify_signature(
    secret: str, header: str | None, body: bytes, *, tolerance_s: int, now: float | None = None
) -> None:
    """Raise ``InvalidSignatureError`` unless ``header`` signs ``body`` with ``secret`` recently."""
    if not header or len(header) > 2048:
        raise InvalidSignatureError(f"The {SIGNATURE_HEADER} header is missing.", reason="missing")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if not value.isascii():  # header bytes arrive as latin-1: "²" is a digit to str, not to int()
            continue
        if key == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1" and len(signatures) < MAX_SIGNATURES:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise InvalidSignatureError(
            f"The {SIGNATURE_HEADER} header needs t=<unix time> and v1=<hex>.", reason="malformed"
        )
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise InvalidSignatureError(
            "The signature's timestamp is outside the tolerance window.", reason="stale"
        )
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise InvalidSignatureError("No signature matches the body.", reason="mismatch")
