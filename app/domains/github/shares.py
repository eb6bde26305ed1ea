"""Who pays for GitHub's quota: each account's share of the window, each client address's, and the
charging of a fetch chain to them.

Private to the GitHub domain (``ProfileLookups`` holds one ``Shares`` as ``shares``; the refreshes and
the snapshot cron use it through it). GitHub's hourly window is shared by every account, so:

- An account's chains (its cold lookups, its refreshes) may cost ``GITHUB_USER_QUOTA_FRACTION`` of
  the window (the snapshot cron's, ``SNAPSHOTS_ACCOUNT``, ``GITHUB_SNAPSHOT_QUOTA_FRACTION``), and it
  may have ``GITHUB_USER_LOOKUPS_IN_FLIGHT`` cold lookups under way per process.
- Accounts are free (20 a minute per address), so the chains asked from one client address (an IPv4
  address, an IPv6 /64, kept as a keyed digest), whatever accounts ask, may cost
  ``GITHUB_ADDRESS_QUOTA_FRACTION`` of the window, and be ``GITHUB_ADDRESS_LOOKUPS_IN_FLIGHT`` under
  way at once across every process (leased slots, ``app/core/slots.py``). Without the share, five
  accounts of one person spent the whole window; without the cap, thirty lookups asked at once all
  passed the check before any was charged. A refresh job at the cap waits for a slot, one job of an
  address at a time (``waiting_turn``).
- A chain is charged to its payer (``Payer``) as it goes. Once it has the user, it reserves the pages
  of repositories it must read (``afford``: with either share spent, counting the reservations of
  the chains under way, it stops there, storing nothing), and it measures repositories' languages
  only while both shares have room (``within_share``). So the chains under way at once pass a share
  by at most one chain's pages and a request or two each, and the caps on chains under way bound
  that. Before the reservation, four chains of users with a thousand repositories (eleven requests
  each before any language) took one address to 46 of its 24.

Spent counts live in Valkey until GitHub's window ends: ``github:lookup-spent:<account>`` and
``github:lookup-spent:ip:<digest>``.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import structlog
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.repeating import repeating
from app.core.slots import LeasedSlots, Slot
from app.domains.github.client import RequestMeter, metered
from app.domains.github.errors import LookupBudgetError, PayerRefusedError, TooManyLookupsError
from app.domains.github.governor import RateLimitGovernor

log = structlog.get_logger("app.github")

T = TypeVar("T")

LOOKUPS_IN_FLIGHT_RETRY_S = 2
SLOT_LEASE_S = 30.0
"""A chain's slot among its address's, renewed every third of it while the chain runs: given back when
the chain ends, the lease frees within it the slots of a process that died or stopped with chains
under way (its give-back then finds Valkey closed)."""
SNAPSHOTS_ACCOUNT = 0
"""The account the snapshot cron's fetch chains are charged to (no user has id 0): its share is
``GITHUB_SNAPSHOT_QUOTA_FRACTION`` of GitHub's limit, so tracked logins, which every account may add
at no cost, cannot take the whole window from the accounts' own lookups."""

# KEYS = the payer's spent requests (its account's, its address's); ARGV = cost, end of the window
# (epoch ms) for a new count. A cost below zero (a reservation given back) lowers a count only down to
# zero, and only a count that still exists: one given back after GitHub's window turned would leave the
# new window's count below zero. A script of its own (not the previous release's, which charged one
# key and answered an integer): scripts are called by their digest, so both releases keep theirs.
_SPEND = """
local cost = tonumber(ARGV[1])
local spent = {}
for i, key in ipairs(KEYS) do
    if cost >= 0 then
        spent[i] = redis.call('INCRBY', key, cost)
        if redis.call('PTTL', key) < 0 then redis.call('PEXPIREAT', key, ARGV[2]) end
    else
        local now = tonumber(redis.call('GET', key) or '0')
        spent[i] = now
        if now > 0 then spent[i] = redis.call('DECRBY', key, math.min(now, -cost)) end
    end
end
return spent
"""


def _account_limit(account: int) -> str:
    return f"account:{account}"


@dataclass(frozen=True, slots=True)
class Payer:
    """Who a fetch chain is charged to: an account, and the client address it was asked from with
    its slot among that address's chains under way once admitted (``Shares.admit``). No address for
    the snapshot cron's chains, nor for a refresh asked before the release that keeps addresses."""

    account: int
    address: str | None = None
    slot: Slot | None = None

    @property
    def limits(self) -> frozenset[str]:
        """The limits the payer is held to, as ``PayerRefusedError.whose`` names them."""
        account = _account_limit(self.account)
        return frozenset({account} if self.address is None else {account, self.address})


class Shares:
    """The accounts' and addresses' shares of GitHub's window, and the caps on their chains under way
    (this module's docstring)."""

    def __init__(self, settings: Settings, valkey: Valkey, governor: RateLimitGovernor) -> None:
        self.settings = settings
        self.valkey = valkey
        self.governor = governor
        self._lookups: dict[int, Counter[str]] = {}
        """Per account, the logins of its cold lookups in flight in this process (callers per login)."""
        self._spend = valkey.register_script(_SPEND)
        cap = settings.github_address_lookups_in_flight
        self.address_chains = LeasedSlots(
            valkey,
            prefix="github:address-chains",
            cap=cap,
            lease_ms=int(SLOT_LEASE_S * 1000),
            too_many=lambda: TooManyLookupsError(
                f"The accounts of one network address may have {cap} lookups and refreshes of GitHub "
                "users under way at once; wait for one of them to finish.",
                headers={"Retry-After": str(LOOKUPS_IN_FLIGHT_RETRY_S)},
            ),
        )
        self.address_waiters = LeasedSlots(
            valkey,
            prefix="github:address-waiters",
            cap=1,
            lease_ms=int(SLOT_LEASE_S * 1000),
            too_many=lambda: TooManyLookupsError("another job of this address waits for a slot"),
        )

    # -- budgets -------------------------------------------------------------------------------

    async def budget(self, account: int | None = None) -> tuple[int, int]:
        """GitHub requests an account's cold lookups and refreshes may cost per GitHub window (the
        snapshot cron's, for ``SNAPSHOTS_ACCOUNT``), and GitHub's limit: a fraction of the limit GitHub
        last reported (before any answer, its documented limit: 60 requests an hour without a token,
        5,000 with one), never less than one request."""
        limit, _ = await self.governor.window()
        fraction = (
            self.settings.github_snapshot_quota_fraction
            if account == SNAPSHOTS_ACCOUNT
            else self.settings.github_user_quota_fraction
        )
        return max(1, math.floor(limit * fraction)), limit

    async def address_budget(self) -> int:
        """GitHub requests the chains asked from one client address may cost per GitHub window,
        whatever accounts asked: ``GITHUB_ADDRESS_QUOTA_FRACTION`` of GitHub's limit."""
        limit, _ = await self.governor.window()
        return max(1, math.floor(limit * self.settings.github_address_quota_fraction))

    async def share_left(self, account: int) -> bool:
        """Whether ``account``'s chains (the snapshot cron's, for ``SNAPSHOTS_ACCOUNT``) have cost less
        than its share of this GitHub window."""
        budget, _ = await self.budget(account)
        return int(await self.valkey.get(_spent_key(account)) or 0) < budget

    async def check(self, user_id: int, address: str | None) -> None:
        """Refuses (429 ``github-lookup-budget``) an account whose chains have cost its share of this
        GitHub window, or an address whose accounts' chains have cost its share. A refresh is checked
        so when it is asked for, and its job's chain ``admit``ted when it is about to ask GitHub."""
        if (refused := await self.refusal(user_id, address)) is not None:
            raise refused.problem

    async def admit(self, user_id: int, address: str | None) -> Payer:
        """The payer of a new chain of account ``user_id`` asked from ``address``: ``check``ed, then
        holding a slot among the address's chains under way; else ``PayerRefusedError`` (its
        ``problem`` a 429 ``github-lookup-budget`` or ``github-lookups-in-flight``). Asked by a chain
        about to ask GitHub (holding the login's fetch lock: one that waits for another process's
        chain needs neither share nor slot); it gives the slot back when it ends (``charging``)."""
        if (refused := await self.refusal(user_id, address)) is not None:
            raise refused
        if address is None:
            return Payer(user_id)
        try:
            slot = await self.address_chains.claim(address)
        except TooManyLookupsError as problem:
            raise PayerRefusedError(problem, address) from None
        return Payer(user_id, address, slot)

    async def refusal(self, user_id: int, address: str | None) -> PayerRefusedError | None:
        """The refusal of a payer whose account's or address's share of this window is spent (the
        account's first), None while both have room."""
        if not await self.share_left(user_id):
            return PayerRefusedError(await self._budget_spent(user_id), _account_limit(user_id))
        if address is not None:
            spent = int(await self.valkey.get(_address_spent_key(address)) or 0)
            if spent >= (budget := await self.address_budget()):
                return PayerRefusedError(await self._address_budget_spent(address, spent, budget), address)
        return None

    @contextlib.asynccontextmanager
    async def waiting_turn(self, address: str | None) -> AsyncIterator[bool]:
        """The one turn of an address's refresh jobs to wait for a slot among its chains under way
        (``Refreshes``), held for the block (False: another job of the address has it): a job
        waiting holds its worker's place, so one address's jobs would fill the queue's workers
        waiting. Its lease (``SLOT_LEASE_S``) is renewed while the job waits: a wait may outlast its
        ``GITHUB_COLD_WAIT_S`` while one try waits for another process's chain of the login."""
        turn: Slot | None = None
        if address is not None:
            with contextlib.suppress(TooManyLookupsError):
                turn = await self.address_waiters.claim(address)
        if turn is None:
            yield False
            return
        try:
            async with repeating(turn.renew, SLOT_LEASE_S / 3, name="github_waiting_turn_renewal"):
                yield True
        finally:
            await turn.release()

    async def _budget_spent(self, user_id: int) -> LookupBudgetError:
        budget, limit = await self.budget()
        key = _spent_key(user_id)
        async with self.valkey.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            spent_raw, ttl_ms = await pipe.execute()
        return LookupBudgetError(
            f"Looking up GitHub users that are not stored yet and refreshing stored ones may cost each "
            f"account {budget} GitHub requests per hour ({self.settings.github_user_quota_fraction:.0%} "
            f"of GitHub's limit of {limit}, shared by every account); yours have cost {int(spent_raw or 0)} "
            "in this hour. Users already stored are still answered (once stale, without a refresh).",
            headers={"Retry-After": _until_window_ends(ttl_ms)},
        )

    async def _address_budget_spent(self, address: str, spent: int, budget: int) -> LookupBudgetError:
        limit, _ = await self.governor.window()
        ttl_ms = await self.valkey.pttl(_address_spent_key(address))
        return LookupBudgetError(
            f"Looking up GitHub users that are not stored yet and refreshing stored ones may cost the "
            f"accounts of one network address {budget} GitHub requests per hour "
            f"({self.settings.github_address_quota_fraction:.0%} of GitHub's limit of {limit}, shared by "
            f"every account); those of yours have cost {spent} in this hour. Users already stored are "
            "still answered (once stale, without a refresh).",
            headers={"Retry-After": _until_window_ends(ttl_ms)},
        )

    # -- charging ------------------------------------------------------------------------------

    async def charging(self, payer: Payer, work: Coroutine[Any, Any, T]) -> T:
        """Run a fetch chain (a flight's task), charging what GitHub charged for it to ``payer``: as it
        goes (``within_share``), and the rest when it ends; then its address slot is given back."""
        with metered() as meter:
            share = _Share(payer, meter)
            token = _SHARE.set(share)
            try:
                if payer.slot is None:
                    return await work
                renewal = partial(_renew, payer.slot, payer.account)
                async with repeating(renewal, SLOT_LEASE_S / 3, name="github_chain_slot_renewal"):
                    return await work
            finally:
                _SHARE.reset(token)
                if (cost := meter.charged - share.charged) != 0:  # below zero: reserved, not asked
                    try:
                        await self._charge(share)
                    except Exception:  # the answer stands; the payer is charged less this once
                        log.warning("github_lookup_not_charged", user_id=payer.account, cost=cost)
                if payer.slot is not None:
                    await payer.slot.release()

    async def within_share(self) -> bool:
        """Whether the chain under way may ask GitHub for one more resource it can do without (a
        repository's languages): it charges its payer what it has cost so far, and reads what the
        payer's account's and address's chains have cost in all. A chain nobody pays for may.

        Charged only once the chain ended, an account's chains under way at once each cost up to a
        whole chain on top of its share (two of them: 44 requests of an anonymous hour's 60 against a
        share of 12, and the other accounts' lookups then met GitHub's own limit)."""
        share = _SHARE.get()
        if share is None:
            return True
        payer = share.payer
        try:
            spent = await self._charge(share)
            budgets = await self._budgets(payer)
        except Exception:  # Valkey: measure no more than what has been measured (the answer stands)
            log.warning("github_share_unknown", user_id=payer.account)
            return False
        return all(cost < budget for cost, budget in zip(spent, budgets, strict=True))

    async def afford(self, requests: int) -> None:
        """Reserve ``requests`` the chain under way must ask next and cannot do without (its pages of
        repositories) against its payer's shares: charged now, so that the chains under way at once
        see each other's. ``PayerRefusedError`` (the reservation given back, nothing asked) when either
        share had no room left before it, counting the others' reservations; so one chain may pass a
        share by its pages, but not every chain under way at once. Refusing a chain that does not fit
        whole would refuse a user with a thousand repositories (eleven requests) to any account that
        has spent two of its twelve. A chain nobody pays for may; so may one whose count Valkey
        cannot give (the answer stands, as in ``within_share``)."""
        share = _SHARE.get()
        if share is None:
            return
        payer = share.payer
        try:
            spent = await self._charge(share, reserve=requests)
            budgets = await self._budgets(payer)
        except Exception:
            log.warning("github_share_unknown", user_id=payer.account)
            return
        if all(cost - requests < budget for cost, budget in zip(spent, budgets, strict=True)):
            return
        try:
            await self._charge(share)  # gives the reservation back: it was counted as charged
        except Exception:  # the payer is charged the pages it did not read, this once
            log.warning("github_share_not_given_back", user_id=payer.account, requests=requests)
        if spent[0] - requests >= budgets[0]:
            raise PayerRefusedError(await self._budget_spent(payer.account), _account_limit(payer.account))
        assert payer.address is not None
        problem = await self._address_budget_spent(payer.address, spent[1] - requests, budgets[1])
        raise PayerRefusedError(problem, payer.address)

    async def _budgets(self, payer: Payer) -> list[int]:
        """What the payer's account (first) and address may spend in this window."""
        budgets = [(await self.budget(payer.account))[0]]
        if payer.address is not None:
            budgets.append(await self.address_budget())
        return budgets

    async def _charge(self, share: _Share, *, reserve: int = 0) -> list[int]:
        """Charge the payer what its chain cost since the last charge (below zero: fewer than it
        reserved), and ``reserve`` requests it has yet to ask; what the chains of its account (first)
        and of its address have cost in all."""
        _, window_end = await self.governor.window()
        cost = share.meter.charged - share.charged + reserve
        share.charged += cost  # before the call: a reply lost after the count moved must not count twice
        keys = [_spent_key(share.payer.account)]
        if share.payer.address is not None:
            keys.append(_address_spent_key(share.payer.address))
        return [int(spent) for spent in await self._spend(keys=keys, args=[cost, int(window_end * 1000)])]

    # -- an account's cold lookups in flight (this process) ------------------------------------

    def hold_lookup(self, user_id: int, login: str) -> None:
        """Counts the caller among the account's lookups in flight; a new login past the cap is a 429.
        Joining a lookup of a login the account already has in flight adds no work and is free."""
        held = self._lookups.setdefault(user_id, Counter())
        cap = self.settings.github_user_lookups_in_flight
        if login not in held and len(held) >= cap:
            raise TooManyLookupsError(
                f"An account may have {cap} lookups of GitHub users that are not stored yet under way "
                "at once; wait for one of yours to finish.",
                headers={"Retry-After": str(LOOKUPS_IN_FLIGHT_RETRY_S)},
            )
        held[login] += 1

    def release_lookup(self, user_id: int, login: str) -> None:
        held = self._lookups.get(user_id)
        if held is None:
            return
        held[login] -= 1
        if held[login] <= 0:
            del held[login]
        if not held:
            del self._lookups[user_id]


class _Share:
    """A chain's payer, its requests (``meter``) and how many of them it has been charged so far."""

    __slots__ = ("charged", "meter", "payer")

    def __init__(self, payer: Payer, meter: RequestMeter) -> None:
        self.payer = payer
        self.meter = meter
        self.charged = 0


_SHARE: ContextVar[_Share | None] = ContextVar("github_share", default=None)


async def _renew(slot: Slot, account: int) -> None:
    """Renew a chain's slot. One whose lease lapsed (a Valkey stall) and whose address's other chains
    took every slot meanwhile runs on as one more: said, not stopped (its requests are charged)."""
    if not await slot.renew():
        log.warning("github_chain_slot_lost", user_id=account)


def _until_window_ends(ttl_ms: int) -> str:
    """A ``Retry-After`` for a spent share: when its count (kept until GitHub's window ends) goes."""
    return str(max(1, math.ceil(ttl_ms / 1000) if ttl_ms > 0 else 60))


def _address_spent_key(address: str) -> str:
    """GitHub requests the chains asked from ``address`` (``app.core.ratelimit.ClientAddress``: a
    digest, ``ip:...``) have cost in the current GitHub window."""
    return f"github:lookup-spent:{address}"


def _spent_key(user_id: int) -> str:
    """GitHub requests the account's cold lookups and refreshes have cost in the current GitHub
    window (the key keeps its name: a rolling deploy's two releases count in the same one)."""
    return f"github:lookup-spent:{user_id}"
