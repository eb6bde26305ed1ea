"""What the live feed streams of a process share: their slots, and their end when the process stops.

Slots. An account holds at most ``FEED_STREAM_MAX_PER_USER`` live streams at once, across every
process: each one costs a connection, a subscription and a PostgreSQL query per wake-up. They are
``LeasedSlots`` (``app/core/slots.py``: Valkey leases) under ``feed:streams:{user}``. The handler
checks that a slot is free (one more is a 429); the stream's body takes it before its first message,
its keeper task renews it at every heartbeat (even while a send waits on a client that stopped
reading, which it cuts after ``STALL_HEARTBEATS``), and it is given back when the stream ends, so
the slots of a process that died free themselves after ``LEASE_HEARTBEATS`` heartbeats; a stream
whose own lease lapsed (a stalled process) and was taken meanwhile ends at its next heartbeat.
Valkey unreachable: opening a stream fails (503), as its subscription would; an open stream keeps
going and renews at the next heartbeat.

Stopping. Every live stream of the process ends when it stops (``LiveStreams.stops``,
``app.core.stops``): a stream ends at its loop's next turn, or, when its ``send`` waits on a client
that stopped reading, is cut by its keeper task at once (both run ``watching`` the events ``stop``
sets), never after the stall verdict, which would outlast granian's kill timeout.
"""

from __future__ import annotations

import math

from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import TooManyRequestsError
from app.core.slots import LeasedSlots, Slot
from app.core.stops import StreamStops

__all__ = ["LiveStreams", "Slot", "TooManyStreamsError", "slots_key"]

LEASE_HEARTBEATS = 3
MIN_LEASE_S = 10.0


class TooManyStreamsError(TooManyRequestsError):
    slug = "too-many-streams"
    title = "Too many live streams"


SLOTS_PREFIX = "feed:streams"


def slots_key(user_id: int) -> str:
    return f"{SLOTS_PREFIX}:{user_id}"


class LiveStreams:
    def __init__(self, valkey: Valkey, settings: Settings, stops: StreamStops) -> None:
        self.valkey = valkey
        self.cap = settings.feed_stream_max_per_user
        heartbeat_s = settings.feed_stream_heartbeat_s
        self.lease_ms = int(max(LEASE_HEARTBEATS * heartbeat_s, MIN_LEASE_S) * 1000)
        self.retry_after_s = max(1, math.ceil(heartbeat_s))
        self.slots = LeasedSlots(
            valkey, prefix=SLOTS_PREFIX, cap=self.cap, lease_ms=self.lease_ms, too_many=self._too_many
        )
        self.stops = stops

    async def reserve(self, user_id: int) -> Slot:
        """A slot for a new live stream of the user, taken by its body (``LeasedSlots.reserve``);
        ``TooManyStreamsError`` when all are taken."""
        return await self.slots.reserve(user_id)

    def _too_many(self) -> TooManyStreamsError:
        return TooManyStreamsError(
            f"At most {self.cap} live feed streams per account are open at once: close one first.",
            headers={"Retry-After": str(self.retry_after_s)},
        )
