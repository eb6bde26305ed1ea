"""Per-owner slots for long-lived work (live streams, GitHub's fetch chains), across every process:
Valkey leases.

An owner (an account; for GitHub's fetch chains, a client address) holds at most ``cap`` slots at
once: each piece of work costs a connection, or GitHub's quota, while it lasts. The slots are a
sorted set per owner in Valkey, ``<prefix>:<owner>``: slot ids scored by the time (Valkey's clock,
in ms) their lease ends. A response takes its slot before it starts (one more is the caller's 429),
renews it while it lasts longer than its lease and gives it back when it ends (``reserve`` then
``take``: a response whose body never starts holds none). Every claim first drops the lapsed
leases, so the slots of a process that died free themselves once their leases end. Valkey
unreachable: the claim fails (503).

Used by the feed's live streams (``app/domains/activity/live.py``), GitHub's refresh streams and the
fetch chains asked from one client address (``app/domains/github/shares.py``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable

import anyio
from valkey.asyncio import Valkey

from app.core.errors import AppError
from app.core.valkey import VALKEY_DOWN

# KEYS: the owner's slots. ARGV: the slot id, the lease (ms), the cap. 1: the slot is held (taken
# or renewed); 0: every slot is taken by others.
_CLAIM = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class Slot:
    """One response's (or fetch chain's) place among its owner's."""

    def __init__(self, slots: LeasedSlots, owner: int | str) -> None:
        self.slots = slots
        self.key = slots.key(owner)
        self.id = uuid.uuid4().hex

    async def renew(self) -> bool:
        """Take or renew the lease; False when the owner's others hold every slot."""
        slots = self.slots
        held = await slots.claim_script(keys=[self.key], args=[self.id, slots.lease_ms, slots.cap])
        return bool(held)

    async def take(self) -> bool:
        """Take the slot ``LeasedSlots.reserve`` checked, as the response's body starts; False when the
        account's other responses took the last one meanwhile, or Valkey is unreachable (the body
        ends; the client retries and gets its 429 or 503)."""
        try:
            return await self.renew()
        except VALKEY_DOWN:
            return False

    async def release(self) -> None:
        """Give the slot back (shielded: it runs as the response is cancelled by its client leaving)."""
        with anyio.CancelScope(shield=True), contextlib.suppress(*VALKEY_DOWN):
            await self.slots.valkey.zrem(self.key, self.id)


class LeasedSlots:
    """At most ``cap`` slots per owner under ``prefix``, each a lease of ``lease_ms``;
    ``too_many()`` is the error a claim past the cap raises (a ``TooManyRequestsError``)."""

    def __init__(
        self, valkey: Valkey, *, prefix: str, cap: int, lease_ms: int, too_many: Callable[[], AppError]
    ) -> None:
        self.valkey = valkey
        self.prefix = prefix
        self.cap = cap
        self.lease_ms = lease_ms
        self.too_many = too_many
        self.claim_script = valkey.register_script(_CLAIM)

    def key(self, owner: int | str) -> str:
        return f"{self.prefix}:{owner}"

    async def claim(self, owner: int | str) -> Slot:
        """A slot for a new response of the owner; ``too_many()`` when all are taken."""
        slot = Slot(self, owner)
        try:
            held = await slot.renew()
        except BaseException:  # the claim may have been applied, its reply lost: not left for its lease
            await slot.release()
            raise
        if not held:
            raise self.too_many()
        return slot

    async def reserve(self, owner: int | str) -> Slot:
        """A slot for a response whose body has not started: ``too_many()`` now when all are taken,
        but held only once the body ``take``s it. A slot claimed by the handler was held until its
        lease ended when the client left before the body started (its ``finally`` never ran): the
        account's next streams got 429s for that long."""
        slot = await self.claim(owner)
        await slot.release()
        return slot
