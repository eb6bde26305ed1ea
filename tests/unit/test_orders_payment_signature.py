"""The payment webhook's timestamp window, on a fixed clock: the HTTP tests cannot pin its edges
(the server reads the clock a moment after the test signs)."""

from __future__ import annotations

import pytest

from app.domains.orders.payments import InvalidSignatureError, verify_signature
from tests.fakes.payments import TEST_SECRET, signature

BODY = b'{"type":"payment.succeeded"}'
SIGNED_AT = 1_800_000_000


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_a_signature_within_the_tolerance_either_way_is_accepted(offset: int) -> None:
    header = signature(BODY, timestamp=SIGNED_AT)
    verify_signature(TEST_SECRET, header, BODY, tolerance_s=300, now=SIGNED_AT + offset)


@pytest.mark.parametrize("offset", [-300.001, -301, 300.001, 301])
def test_a_signature_outside_the_tolerance_either_way_is_refused(offset: float) -> None:
    header = signature(BODY, timestamp=SIGNED_AT)
    with pytest.raises(InvalidSignatureError, match="tolerance"):
        verify_signature(TEST_SECRET, header, BODY, tolerance_s=300, now=SIGNED_AT + offset)
