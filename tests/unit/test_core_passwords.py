"""Password work runs in threads of its own, bounded: a burst of sign-ins neither queues without end
nor holds up the loop's default executor (``getaddrinfo``: every new connection to a named host)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import argon2
import pytest

from app.config import load_settings
from app.core.errors import ServiceUnavailableError
from app.core.security import Passwords

PASSWORD = "correct horse battery staple"
HANG_GUARD_S = 60.0
"""Only bounds a failing run (the old code never resolves): nothing is timed."""


@pytest.fixture
async def passwords(tmp_path: Any) -> AsyncIterator[Passwords]:
    settings = load_settings(
        {
            "APP_ENV": "test",
            "DATA_DIR": str(tmp_path),
            "PASSWORD_TIME_COST": "1",
            "PASSWORD_MEMORY_KIB": "8192",
            "PASSWORD_CHECKS_MAX": "2",
        }
    )
    passwords = Passwords(settings)
    yield passwords
    await passwords.close()


class _HeldHasher:
    """argon2's hasher whose verification waits for ``release`` (``started`` set once one runs)."""

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self.release, self.started = threading.Event(), threading.Event()

    def verify(self, *args: Any) -> bool:
        self.started.set()
        self.release.wait()
        return bool(self.hasher.verify(*args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hasher, name)


async def _refused_at_once(passwords: Passwords, stored: str) -> None:
    """A check asked now is refused before it waits for anything (one step of the loop)."""
    attempt = asyncio.ensure_future(passwords.verify(stored, PASSWORD))
    await asyncio.sleep(0)
    try:
        assert attempt.done(), "the check waits in a queue"
        error = attempt.exception()
        assert isinstance(error, ServiceUnavailableError) and error.headers == {"Retry-After": "1"}
    finally:
        attempt.cancel()


def _held(passwords: Passwords) -> tuple[threading.Event, threading.Event]:
    held = _HeldHasher(passwords._hasher)
    passwords._hasher = held  # type: ignore[assignment]
    return held.release, held.started


async def test_past_the_bound_a_check_is_refused_at_once_and_the_others_are_answered(
    passwords: Passwords,
) -> None:
    stored = await passwords.hash(PASSWORD)
    release, _ = _held(passwords)
    right = asyncio.ensure_future(passwords.verify(stored, PASSWORD))
    wrong = asyncio.ensure_future(passwords.verify(stored, "not it"))
    await asyncio.sleep(0)
    await _refused_at_once(passwords, stored)
    release.set()
    assert await right is True and await wrong is False
    assert await passwords.verify(stored, PASSWORD) is True  # places are given back


async def test_a_cancelled_check_keeps_its_place_until_its_work_ends(passwords: Passwords) -> None:
    stored = await passwords.hash(PASSWORD)
    release, started = _held(passwords)
    first = asyncio.ensure_future(passwords.verify(stored, PASSWORD))
    second = asyncio.ensure_future(passwords.verify(stored, PASSWORD))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await _refused_at_once(passwords, stored)  # the first's work still runs: no place is free
    release.set()
    assert await second is True
    assert await passwords.verify(stored, PASSWORD) is True


def test_checks_waiting_for_a_thread_do_not_hold_up_the_default_executor(tmp_path: Any) -> None:
    """In a loop of its own, whose default executor has two threads (as on a 2-CPU host)."""
    settings = load_settings(
        {
            "APP_ENV": "test",
            "DATA_DIR": str(tmp_path),
            "PASSWORD_TIME_COST": "1",
            "PASSWORD_MEMORY_KIB": "8192",
        }
    )

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
        passwords = Passwords(settings)
        try:
            stored = await passwords.hash(PASSWORD)
            release, _ = _held(passwords)
            checks = [asyncio.ensure_future(passwords.verify(stored, PASSWORD)) for _ in range(8)]
            resolving = asyncio.ensure_future(loop.getaddrinfo("localhost", 5432))
            done, _ = await asyncio.wait({resolving}, timeout=HANG_GUARD_S)
            release.set()
            assert resolving in done, "name resolution waited for the password checks"
            assert all(await asyncio.gather(*checks))
        finally:
            await passwords.close()

    asyncio.run(scenario())


async def test_closing_joins_the_threads(passwords: Passwords) -> None:
    """The ``serve`` command seeds (hashes) in its main process, then forks the server: no thread of
    ours may still be alive by then."""
    await passwords.hash(PASSWORD)
    threads = set(passwords._threads._threads)  # type: ignore[attr-defined]
    assert threads and all(thread.is_alive() for thread in threads)
    await passwords.close()
    assert not any(thread.is_alive() for thread in threads)


async def test_a_hash_with_older_parameters_is_checked_even_when_only_one_check_fits(tmp_path: Any) -> None:
    """Such a hash is checked together with a current-parameter one (the cost of an unknown email),
    but that second check only takes a free place: with ``PASSWORD_CHECKS_MAX=1`` the account still
    signs in instead of being refused 503 every time."""
    settings = load_settings(
        {
            "APP_ENV": "test",
            "DATA_DIR": str(tmp_path),
            "PASSWORD_TIME_COST": "2",
            "PASSWORD_MEMORY_KIB": "8192",
            "PASSWORD_CHECKS_MAX": "1",
        }
    )
    passwords = Passwords(settings)
    try:
        older = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
        assert passwords.needs_rehash(older)
        assert await passwords.verify(older, PASSWORD) is True
        assert await passwords.verify(older, "not it") is False
    finally:
        await passwords.close()
