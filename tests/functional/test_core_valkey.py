"""The shared Valkey client (``app/core/valkey.py``) on a private Valkey: concurrent calls share at
most ``VALKEY_POOL_MAX`` connections, and calls that cannot get one fail like an unreachable Valkey
(what every caller already degrades on), leaving the pool usable once Valkey answers again."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from valkey.asyncio import Valkey

from app.config import Settings, SettingsError, load_settings
from app.core.cache import VALKEY_DOWN
from app.core.valkey import create_valkey
from tests.factories import wait_until
from tests.valkey_control import ControlledValkey


async def connected_clients(url: str) -> int:
    async with Valkey.from_url(url) as observer:
        return len(await observer.client_list()) - 1  # not counting the observer


async def test_concurrent_calls_share_the_pools_connections(
    controlled_valkey: ControlledValkey, settings: Settings
) -> None:
    client = create_valkey(msgspec.structs.replace(settings, valkey_pool_max=3), controlled_valkey.url)
    try:
        values = await asyncio.gather(*(client.incr("calls") for _ in range(50)))
        assert sorted(values) == list(range(1, 51))
        assert await connected_clients(controlled_valkey.url) <= 3
    finally:
        await client.aclose()


async def test_calls_that_get_no_connection_fail_like_an_unreachable_valkey(
    controlled_valkey: ControlledValkey, settings: Settings
) -> None:
    client = create_valkey(
        msgspec.structs.replace(settings, valkey_pool_max=1, valkey_timeout_s=0.3), controlled_valkey.url
    )
    try:
        await client.ping()
        with controlled_valkey.paused():
            outcomes = await asyncio.gather(client.get("a"), client.get("b"), return_exceptions=True)
        assert all(isinstance(outcome, VALKEY_DOWN) for outcome in outcomes), outcomes

        async def lent_again() -> bool:  # polled: a loaded machine can miss 0.3 s just after the resume
            try:
                return await client.set("after", "1") is True
            except VALKEY_DOWN:
                return False

        await wait_until(lent_again, 10, "the pool lends its connection again")
    finally:
        await client.aclose()


@pytest.mark.parametrize("pool_max", [0, 10_001])
def test_the_pool_size_is_bounded_in_the_settings(pool_max: int) -> None:
    with pytest.raises(SettingsError, match="VALKEY_POOL_MAX"):
        load_settings({"APP_ENV": "test", "VALKEY_POOL_MAX": str(pool_max)})
