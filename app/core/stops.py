"""The end of a process's long-lived responses (Server-Sent Events) when the process stops.

granian runs the application's lifespan shutdown only once every connection has ended, and a live
stream does not end by itself: each SIGTERM or Ctrl-C with a stream open made granian kill the
worker after its timeout, skipping the shutdown (the in-process SAQ worker stayed registered in
Valkey). So when a server in this process handles SIGTERM and SIGINT itself (it has installed a
Python handler for them, as the event loops of granian and uvicorn do), ``start`` puts a handler in
front of each that calls ``stop``, then runs the server's. ``close`` stops too (a server whose
lifespan shutdown comes first).

One per process (``Services.stream_stops``), shared by every domain that streams: the activity
feed's live streams and the GitHub refresh streams. A stream runs ``watching`` an event that
``stop`` sets, and checks ``stopping`` when it wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["STOP_SIGNALS", "StreamStops"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StreamStops:
    def __init__(self) -> None:
        self.stopping = False
        self._wakes: set[asyncio.Event] = set()
        self._handlers: dict[int, tuple[Any, Any]] = {}

    @contextlib.contextmanager
    def watching(self, *wakes: asyncio.Event) -> Iterator[None]:
        """Inside, each of ``wakes`` is set when the streams must end (the stream then checks
        ``stopping``)."""
        self._wakes.update(wakes)
        try:
            yield
        finally:
            self._wakes.difference_update(wakes)

    def stop(self) -> None:
        """End every stream of this process: each watched event is set; streams opened from now on
        see ``stopping`` at once."""
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
