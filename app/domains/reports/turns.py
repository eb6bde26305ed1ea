"""How many reports this process computes at once, and how many of them one account runs.

A report the cache does not hold is computed on a pooled connection for as long as its raw rows take
(seconds on a busy site, up to the statement timeout). Bounded only by the request rate, one member
asking for their own site's reports uncached (another zone or period each time misses the cache)
held most of the pool's 20 connections at once: every other user's requests, the outbox relay and
the cron jobs waited out ``DATABASE_TIMEOUT_S`` and failed with 503 (the neighbour review: 24 such
requests in flight, well within the rate limit).

So a computation takes a turn first. At most ``REPORT_LOADS_MAX`` run in this process (a quarter of
``DATABASE_POOL_MAX`` unless set), which leaves the rest of the pool to everything else; and one
account runs at most ``REPORT_LOADS_PER_ACCOUNT`` of them, its others waiting behind its own, so one
reader's queue does not hold back the next reader's report. Waiting for a turn is waiting for the
database: at most ``DATABASE_TIMEOUT_S``, then a 429 (the account's own reports fill its turns) or a
503 (every turn of the process is taken), both with ``Retry-After``. A cached answer, or joining a
computation already under way (the cache's single flight), takes no turn. Waiting costs a coroutine,
never a connection.

``asyncio.Semaphore`` by hand, not a library: nothing in the stack bounds concurrency per key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.core.errors import ServiceUnavailableError, TooManyRequestsError

T = TypeVar("T")

RETRY_AFTER_S = 2


class TooManyReportsError(TooManyRequestsError):
    slug = "report-loads-in-flight"
    title = "Too many of your reports are being computed"

    def __init__(self, detail: str, *, account: int, headers: dict[str, str]) -> None:
        super().__init__(detail, headers=headers)
        self.account = account
        """Whose turns were taken: a caller who joined that account's computation was not refused."""


class ReportsBusyError(ServiceUnavailableError):
    slug = "reports-busy"
    title = "Reports are busy"


class _AccountTurns:
    __slots__ = ("turns", "users")

    def __init__(self, at_once: int) -> None:
        self.turns = asyncio.Semaphore(at_once)
        self.users = 0


class ReportTurns:
    """The turns of this process's report computations (the module docstring)."""

    def __init__(self, at_once: int, per_account: int, wait_s: float) -> None:
        self.at_once = at_once
        self.per_account = per_account
        self.wait_s = wait_s
        self._process = asyncio.Semaphore(at_once)
        self._accounts: dict[int, _AccountTurns] = {}

    async def run(self, account: int | None, load: Callable[[], Awaitable[T]]) -> T:
        """``load()`` once it has a turn of ``account`` (``None``: the app itself, no account's) and
        one of the process; a 429 or 503 if either takes longer than ``wait_s`` to come."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        if account is None:
            return await self._in_process_turn(deadline, load)
        mine = self._accounts.get(account)
        if mine is None:
            mine = self._accounts[account] = _AccountTurns(self.per_account)
        mine.users += 1
        try:
            if not await _taken(mine.turns, deadline):
                raise TooManyReportsError(
                    f"Reports of yours are computed {self.per_account} at a time and yours waited "
                    f"{self.wait_s:g} s for a turn; retry once those under way are answered.",
                    account=account,
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            try:
                return await self._in_process_turn(deadline, load)
            finally:
                mine.turns.release()
        finally:
            mine.users -= 1
            if not mine.users:
                del self._accounts[account]

    async def _in_process_turn(self, deadline: float, load: Callable[[], Awaitable[T]]) -> T:
        if not await _taken(self._process, deadline):
            raise ReportsBusyError(
                f"Every one of the {self.at_once} reports this server computes at once is taken; "
                "retry shortly.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        try:
            return await load()
        finally:
            self._process.release()


async def _taken(turns: asyncio.Semaphore, deadline: float) -> bool:
    """Whether a turn of ``turns`` came before ``deadline`` (event loop time); it is then held."""
    try:
        async with asyncio.timeout_at(deadline):
            await turns.acquire()
    except TimeoutError:
        return False
    return True
