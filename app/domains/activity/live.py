"""What the live feed streams of a process share: their slots, and their end when the process stops.

Slots. An account holds at most ``FEED_STREAM_MAX_PER_USER`` live streams at once, across every
process: each one costs a connection, a subscription and a PostgreSQL query per wake-up. They are
``StreamSlots`` (``app/core/slots.py``: Valkey leases) under ``feed:streams:{user}``. The handler
checks that a slot is free (one more is a 429); the stream's body takes it before its first message,
its keeper task renews it at every heartbeat (even while a send waits on a client that stopped
reading, which it cuts after ``STALL_HEARTBEATS``), and it is given back when the stream ends, so
the slots of a process that died free themselves after ``LEASE_HEARTBEATS`` heartbeats; a stream
whose own lease lapsed (a stalled process) and was taken meanwhile ends at its next heartbeat.
Valkey unreachable: opening a stream fails (503), as its subscription would; an open stream keeps
going and renews at the next heartbeat.

Stopping. granian runs the application's lifespan shutdown only once every connection has ended,
and a live stream does not end by itself: each SIGTERM or Ctrl-C with a stream open made granian
kill the worker after its timeout, skipping the shutdown (the in-process SAQ worker stayed
registered in Valkey). So when a server in this process handles SIGTERM and SIGINT itself (it has
installed a Python handler for them, as the event loops of granian and uvicorn do), ``start`` puts a
handler in front of each that ends every live stream at once, then runs the server's. ``close`` ends
them too (a server whose lifespan shutdown comes first). A stream ends at its loop's next turn, or,
when its ``send`` waits on a client that stopped reading, is cut by its keeper task at once (both
watch the events ``stop`` sets), never after the stall verdict, which would outlast granian's kill
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
from types import FrameType
from typing import Any

from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import TooManyRequestsError
from app.core.slots import Slot, StreamSlots

__all__ = ["LiveStreams", "Slot", "TooManyStreamsError", "slots_key"]

LEASE_HEARTBEATS = 3
MIN_LEASE_S = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TooManyStreamsError(TooManyRequestsError):
    slug = "too-many-streams"
    title = "Too many live streams"


SLOTS_PREFIX = "feed:streams"


def slots_key(user_id: int) -> str:
    return f"{SLOTS_PREFIX}:{user_id}"


class LiveStreams:
    def __init__(self, valkey: Valkey, settings: Settings) -> None:
        self.valkey = valkey
        self.cap = settings.feed_stream_max_per_user
        heartbeat_s = settings.feed_stream_heartbeat_s
        self.lease_ms = int(max(LEASE_HEARTBEATS * heartbeat_s, MIN_LEASE_S) * 1000)
        self.retry_after_s = max(1, math.ceil(heartbeat_s))
        self.slots = StreamSlots(
            valkey, prefix=SLOTS_PREFIX, cap=self.cap, lease_ms=self.lease_ms, too_many=self._too_many
        )
        self.stopping = False
        self._wakes: set[asyncio.Event] = set()
        self._handlers: dict[int, tuple[Any, Any]] = {}

    async def claim(self, user_id: int) -> Slot:
        """A slot for a new live stream of the user; ``TooManyStreamsError`` when all are taken."""
        return await self.slots.claim(user_id)

    def _too_many(self) -> TooManyStreamsError:
        return TooManyStreamsError(
            f"At most {self.cap} live feed streams per account are open at once: close one first.",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    def watch(self, wake: asyncio.Event) -> None:
        """``wake`` is set when the streams must end (the stream's loop and its keeper then check
        ``stopping``)."""
        self._wakes.add(wake)

    def unwatch(self, wake: asyncio.Event) -> None:
        self._wakes.discard(wake)

    def stop(self) -> None:
        """End every live stream of this process (at its loop's next turn, or cut by its keeper at once
        when a send waits on its client); streams opened from now on end after their replay (cut
        in it as soon as their keeper finds one of its sends waiting)."""
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
