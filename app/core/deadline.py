"""Client-side deadlines on database work, safe for the driver under them.

At a deadline the work must end without waiting on the server (it may be frozen, or a partition may
drop every packet), and without pulling the connection out from under the driver:

- Not a cancellation first: psycopg answers one by sending a cancel request and waiting for the
  query's end, up to 5 s each, on a server that does not answer.
- Not ``pgconn.finish()`` (or ``conn.close()``) while an operation is in flight: psycopg's C
  generators keep libpq's connection pointer across their waits and its socket stays registered with
  the event loop; freeing the one and closing the other under them is a use-after-free, and the
  descriptor's number is soon another connection's. Seen as granian workers dying of SIGSEGV in
  libpq and libc when PostgreSQL froze, once a health probe's deadline gave a connection whose
  check was still running back to the pool, which closed it.

So the connection is *severed*: its socket shut down both ways, libpq's connection left allocated.
The operation waiting on it sees end-of-file at its next wake-up and fails by itself; whoever owns
the connection then discards it. ``finish_within`` waits for that end before it returns or
re-raises, so the connection is never released while the driver still works on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")


def sever(conn: psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket down both ways; libpq's connection stays allocated."""
    with (
        contextlib.suppress(OSError, psycopg.Error),
        socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock,  # closes the dup, not the socket
    ):
        sock.shutdown(socket.SHUT_RDWR)


class DeadlineExceededError(TimeoutError):
    """The work did not finish within its deadline; it was stopped and has ended."""


async def finish_within(task: asyncio.Future[T], timeout_s: float, stop: Callable[[], None]) -> T:
    """``task``'s result, if it finishes within ``timeout_s``; ``DeadlineExceededError`` otherwise.

    At the deadline, or when the caller is cancelled meanwhile, ``stop()`` makes the task end by
    itself (it severs the connection the task uses), and this waits until the task has ended:
    another ``timeout_s``, then the task is cancelled as a last resort. A cancellation of the caller
    is re-raised once the task has ended. A stopped task's own outcome is dropped: a write stopped
    at its deadline may or may not have committed.
    """
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        stop()
        await _ended(task, timeout_s)
        raise
    if done:
        return task.result()
    stop()
    await _ended(task, timeout_s)
    raise DeadlineExceededError(f"no answer within {timeout_s:g}s")


async def answered_within(
    conn: psycopg.AsyncConnection[Any], work: Awaitable[T], timeout_s: float, what: str = "the connection"
) -> T:
    """``work``'s result on ``conn``, or ``psycopg.OperationalError`` once ``conn`` has been severed
    for not answering within ``timeout_s`` (the error its owner already handles as a lost
    connection: the pool discards it, a listener reconnects)."""
    try:
        return await finish_within(asyncio.ensure_future(work), timeout_s, lambda: sever(conn))
    except DeadlineExceededError:
        raise psycopg.OperationalError(f"{what} did not answer within {timeout_s:g}s") from None


async def _ended(task: asyncio.Future[Any], grace_s: float) -> None:
    """Wait until ``task`` is done, through cancellations of the caller (re-raised after)."""
    cancelled = False
    remaining: float | None = grace_s
    while not task.done():
        try:
            done, _ = await asyncio.wait({task}, timeout=remaining)
        except asyncio.CancelledError:
            cancelled = True
            continue
        if not done and remaining is not None:
            task.cancel()
            remaining = None
    if not task.cancelled():
        task.exception()  # retrieved: the severed connection's error is expected
    if cancelled:
        raise asyncio.CancelledError
