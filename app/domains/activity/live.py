"""What the live feed streams of a process share: their slots, and their end when the process stops.

Slots. An account holds at most ``FEED_STREAM_MAX_PER_USER`` live streams at once, across every
process: each one costs a connection, a subscription and a PostgreSQL query per wake-up. They are a
sorted set per account in Valkey, ``feed:streams:{user}``: stream ids scored by the time (Valkey's
clock, in ms) their lease ends. A stream takes its slot before its response starts (one more is a
429), renews it at every heartbeat and gives it back when it ends. Every claim first drops the
lapsed leases, so the slots of a process that died free themselves after ``LEASE_HEARTBEATS``
heartbeats; a stream whose own lease lapsed (a stalled process) and was taken meanwhile ends at its
next heartbeat. Valkey unreachable: opening a stream fails (503), as its subscription would; an open
stream keeps going and renews at the next heartbeat.

Stopping. granian runs the application's lifespan shutdown only once every connection has ended,
and a live stream does not end by itself: each SIGTERM or Ctrl-C with a stream open made granian
kill the worker after its timeout, skipping the shutdown (the in-process SAQ worker stayed
registered in Valkey). So when a server in this process handles SIGTERM and SIGINT itself (it has
installed a Python handler for them, as the event loops of granian and uvicorn do), ``start`` puts a
handler in front of each that ends every live stream at once, then runs the server's. ``close`` ends
them too (a server whose lifespan shutdown comes first).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
import uuid
from types import FrameType
from typing import Any

import anyio
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import TooManyRequestsError
from app.core.valkey import VALKEY_DOWN

LEASE_HEARTBEATS = 3
MIN_LEASE_S = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# KEYS: the account's slots. ARGV: the stream id, the lease (ms), the cap. 1: the stream holds a
# slot (taken or renewed); 0: every slot is taken by other streams.
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


class TooManyStreamsError(TooManyRequestsError):
    slug = "too-many-streams"
    title = "Too many live streams"


def slots_key(user_id: int) -> str:
    return f"feed:streams:{user_id}"


class Slot:
    """One live stream's place among its account's."""

    def __init__(self, streams: LiveStreams, user_id: int) -> None:
        self.streams = streams
        self.key = slots_key(user_id)
        self.id = uuid.uuid4().hex

    async def renew(self) -> bool:
        """Take or renew the lease; False when the account's other streams hold every slot."""
        streams = self.streams
        held = await streams.claim_script(keys=[self.key], args=[self.id, streams.lease_ms, streams.cap])
        return bool(held)

    async def release(self) -> None:
        """Give the slot back (shielded: it runs as the stream is cancelled by its client leaving)."""
        with anyio.CancelScope(shield=True), contextlib.suppress(*VALKEY_DOWN):
            await self.streams.valkey.zrem(self.key, self.id)


class LiveStreams:
    def __init__(self, valkey: Valkey, settings: Settings) -> None:
        self.valkey = valkey
        self.cap = settings.feed_stream_max_per_user
        heartbeat_s = settings.feed_stream_heartbeat_s
        self.lease_ms = int(max(LEASE_HEARTBEATS * heartbeat_s, MIN_LEASE_S) * 1000)
        self.retry_after_s = max(1, math.ceil(heartbeat_s))
        self.claim_script = valkey.register_script(_CLAIM)
        self.stopping = False
        self._wakes: set[asyncio.Event] = set()
        self._handlers: dict[int, tuple[Any, Any]] = {}

    async def claim(self, user_id: int) -> Slot:
        """A slot for a new live stream of the user; ``TooManyStreamsError`` when all are taken."""
        slot = Slot(self, user_id)
        if not await slot.renew():
            raise TooManyStreamsError(
                f"At most {self.cap} live feed streams per account are open at once: close one first.",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        return slot

    def watch(self, wake: asyncio.Event) -> None:
        """``wake`` is set when the streams must end (the stream then checks ``stopping``)."""
        self._wakes.add(wake)

    def unwatch(self, wake: asyncio.Event) -> None:
        self._wakes.discard(wake)

    def stop(self) -> None:
        """End every live stream of this process; streams opened from now on end after their replay."""
        self.stopping = True
        for wake in self._wakes:
            wake.set()

    def start(self) -> None:
        """Put ``stop`` in front of the server's SIGTERM/SIGINT handlers (see the module docstring)."""
        self.stopping = False
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread; no server runs its loop here
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            previous = signal.getsignal(signum)
            if not callable(previous) or previous is signal.default_int_handler:
                continue  # no server handles it in this process: its default action stays

            def stop_then(number: int, frame: FrameType | None, previous: Any = previous) -> None:
                with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                    loop.call_soon_threadsafe(self.stop)
                previous(number, frame)

            signal.signal(signum, stop_then)
            self._handlers[signum] = (stop_then, previous)

    def close(self) -> None:
        self.stop()
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, (ours, previous) in self._handlers.items():
            if signal.getsignal(signum) is ours:  # else someone replaced it since: leave theirs
                signal.signal(signum, previous)
        self._handlers.clear()
