"""Snapshots: the hourly snapshot cron, the history it makes, and the daily retention purge.

Private to the GitHub domain (``GithubService`` holds one ``Snapshots`` as ``snapshots`` and
delegates ``snapshot_due``, ``history`` and ``purge_expired`` to it). The cron snapshots every
tracked login once per snapshot day (``snapshot_day``), fetching through the lookups (``lookups.py``)
on a share of GitHub's limit of its own (``SNAPSHOTS_ACCOUNT``), skips a login whose own answer
failed and pauses on an outage or on answers the client refused (``REFUSED_ANSWERS_IN_A_ROW``,
``REFUSED_RETRY_S``). The history reads the snapshots back as points and changes. The retention
deletes what nobody keeps: untracked profiles, old snapshots, forgotten logins (``purge_expired``),
in chunks, locking as the tracking does (``tracking.py``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import msgspec
import structlog

from app.config import Settings
from app.core.db import Database, UnitOfWork
from app.db import github as queries
from app.db.models import GithubSnapshot
from app.domains.github.analysis import DEFAULT_FILTERS, analyze
from app.domains.github.client import (
    GitHubAnswerRefusedError,
    GitHubBusyError,
    GitHubDownError,
    GitHubError,
    GitHubRateLimitError,
    GitHubRefusedError,
)
from app.domains.github.errors import InvalidRangeError, PayerRefusedError
from app.domains.github.governor import Priority
from app.domains.github.lookups import Clock, ProfileLookups
from app.domains.github.schemas import Change, HistoryOut, HistoryPoint
from app.domains.github.shares import SNAPSHOTS_ACCOUNT, Payer

log = structlog.get_logger("app.github")

PURGE_CHUNK = 10_000
"""Rows deleted per transaction by the retention (``purge_expired``): each statement stays far below
the statement timeout, however many rows have piled up."""
REFUSED_ANSWERS_IN_A_ROW = 3
"""Answers the client refused (``GitHubAnswerRefusedError``) in a row that pause a snapshot run: more
likely everyone's (a ``GITHUB_API_URL`` or proxy that answers something else) than three logins' own."""
REFUSED_RETRY_S = 6 * 3600
"""How long a login whose answer the client refused waits before the snapshot cron asks again: a few
tries a snapshot day, not one an hour, and never the whole day (the refusal may be a proxy's, for
every login, mended an hour later)."""
DEFAULT_HISTORY_DAYS = 30
"""The history's range when ``from`` is not given: this many days ending ``to``."""

_PAUSE_REASONS: dict[type[GitHubError], str] = {
    GitHubBusyError: "busy",
    GitHubRateLimitError: "rate-limit",
    PayerRefusedError: "share",
}
"""Why the snapshot cron stops early, as logged (``snapshot_due``); any other: ``unavailable``."""


class RetentionPurge(msgspec.Struct, frozen=True):
    """What one run of the retention deleted (``GithubService.purge_expired``)."""

    profiles: int
    snapshots: int
    forgotten_logins: int


class Snapshots:
    """The snapshot cron, the history and the retention (this module's docstring)."""

    def __init__(self, db: Database, settings: Settings, lookups: ProfileLookups, *, clock: Clock) -> None:
        self.db = db
        self.settings = settings
        self.lookups = lookups
        self.clock = clock

    async def snapshot_due(self) -> int:
        """The snapshot cron (hourly): snapshot every tracked login that has none for the current
        snapshot day yet, up to ``GITHUB_SNAPSHOTS_PER_RUN`` per run. Snapshot day D runs from
        ``GITHUB_SNAPSHOT_HOUR_UTC`` on D to the same hour on D + 1 (``snapshot_day``), so every
        hourly run of those 24 hours works on D: a missed or failed run is caught up by the next one,
        after midnight too (a snapshot hour of 23 would otherwise leave one run a day, and never
        catch it up); a re-run changes nothing.

        Each login's attempt is recorded before it is fetched and the batch is the longest untried
        first, so logins that fail every time (gone from GitHub, blocked) go behind the others instead
        of filling every batch. They stay tracked: a 404 may be a suspension or a rename taken back,
        and untracking would silently undo the user's choice. Such a failure of the login's own (not
        found, blocked: 451/403) settles it for the snapshot day: it is tried
        again the next day, not in each of the day's hourly runs (24 requests a day for every login
        gone from GitHub, which any account could track before it went). An outage or a spent quota
        settles nothing: the next run takes the login again. An answer the client refuses (a shape,
        size or link no GitHub answer has) holds the login back for ``REFUSED_RETRY_S``, not the day:
        it may be a proxy's for every login, so the day's last hour asks every such login once more;
        three in a row pause the run.

        The runs spend a share of GitHub's limit of their own (``GITHUB_SNAPSHOT_QUOTA_FRACTION``,
        charged as they go like an account's lookups, ``SNAPSHOTS_ACCOUNT``): past it a run stops and
        the next hour's goes on. Without it, the tracked logins of every account (tracking a stored
        login costs nothing) could spend each window down to the reserve, the accounts' own lookups
        left with ``GITHUB_RESERVE_FRACTION`` of it.

        Each snapshot records which GitHub account held the login (its numeric id), so that the
        history tells a login that changed hands from one account's changes (``history``)."""
        day = snapshot_day(self.clock(), self.settings.github_snapshot_hour_utc)
        async with self.db.read() as uow:
            due = await queries.list_github_logins_due(
                uow.conn,
                taken_on=day,
                refused_since=self._refused_since(day),
                batch_size=self.settings.github_snapshots_per_run,
            )
        taken = 0
        refused_in_a_row = 0
        for login in due:
            async with self.db.transaction() as uow:
                await queries.record_github_snapshot_attempt(uow.conn, login=login, attempted_at=self.clock())
            try:
                stored = await self.lookups.load(login)
                fetched = False
                if stored is None or self.lookups.age_s(stored) > self.settings.github_profile_ttl_s:
                    fetched = True
                    if not await self.lookups.shares.share_left(SNAPSHOTS_ACCOUNT):
                        log.warning("github_snapshots_paused", reason="share", login=login, retry_after=None)
                        break
                    stored = await self.lookups.fetch_shared(
                        login,
                        Priority.BACKGROUND,
                        newer_than=stored.fetched_at if stored else None,
                        payer=Payer(SNAPSHOTS_ACCOUNT),
                    )
            except GitHubError as exc:
                refused = isinstance(exc, GitHubAnswerRefusedError)
                if refused:  # the login's fault, or a proxy's for every login: hours, not the day
                    refused_in_a_row += 1
                    async with self.db.transaction() as uow:
                        await queries.record_github_snapshot_refusal(
                            uow.conn, login=login, refused_at=self.clock()
                        )
                elif not exc.remembered:  # an answer of this run (a memory proves nothing of GitHub now)
                    refused_in_a_row = 0
                if _is_outage(exc) or refused_in_a_row >= REFUSED_ANSWERS_IN_A_ROW:
                    # The next hourly run goes on where this one stopped: asking an exhausted quota or a
                    # GitHub that is down for every due login (each with its retries) only adds to the load.
                    reason = "refused-answers" if refused else _PAUSE_REASONS.get(type(exc), "unavailable")
                    log.warning(
                        "github_snapshots_paused", reason=reason, login=login, retry_after=exc.retry_after
                    )
                    break
                log.warning(
                    "github_snapshot_skipped", login=login, kind=exc.kind, snapshot_day=day.isoformat()
                )
                if not refused:
                    async with self.db.transaction() as uow:
                        await queries.record_github_snapshot_failure(uow.conn, login=login, failed_on=day)
                continue
            if fetched:
                refused_in_a_row = 0
            analysis = analyze(
                stored.data,
                DEFAULT_FILTERS,
                top_repos=0,
                top_languages=0,
                bytes_weight=self.settings.github_blend_bytes_weight,
            )
            async with self.db.transaction() as uow:
                taken += await queries.insert_github_snapshot(
                    uow.conn,
                    login=login,
                    taken_on=day,
                    taken_at=self.clock(),
                    github_id=stored.data.user.id,
                    followers=analysis.profile.followers,
                    following=analysis.profile.following,
                    public_repos=analysis.profile.public_repos,
                    repos_counted=analysis.repositories.counted,
                    total_stars=analysis.total_stars,
                    total_forks=analysis.total_forks,
                    language_bytes=analysis.language_bytes,
                )
        return taken

    def _refused_since(self, day: date) -> datetime:
        """Refused answers after this hold their logins back: those of the last ``REFUSED_RETRY_S``,
        none in the snapshot day's last hour (a refusal late in the day would otherwise lose it)."""
        now = self.clock()
        hour = self.settings.github_snapshot_hour_utc
        day_ends = datetime(day.year, day.month, day.day, hour, tzinfo=UTC) + timedelta(days=1)
        return now if now >= day_ends - timedelta(hours=1) else now - timedelta(seconds=REFUSED_RETRY_S)

    # -- retention ---------------------------------------------------------------------------

    async def purge_expired(self, *, chunk_size: int = PURGE_CHUNK) -> RetentionPurge:
        """The retention (a daily cron; idempotent: a re-run finds nothing more to delete). "Tracks"
        means an active account tracks: a deactivated account's logins are not fetched any more, and
        their profiles and histories (third parties' data) go as an untracked login's do.

        - A profile of a login nobody tracks that was not fetched for ``GITHUB_PROFILE_RETENTION_DAYS``
          is deleted. Nothing depends on it being there: a lookup with nothing stored is a cold
          lookup (fetched again, on the asking account's share of the quota); only the stale
          fallback while GitHub is down is lost for such a login (a 503 instead of data that old).
          Tracked logins keep theirs: the snapshot cron and a tracker's reads use it every day.
        - Snapshots older than ``GITHUB_SNAPSHOT_RETENTION_DAYS`` are deleted, tracked or not
          (by default 400, above ``GITHUB_HISTORY_MAX_DAYS``' 366: no full-range answer shrinks).
        - The snapshots and the snapshot attempt of a login nobody tracks any more are deleted
          ``GITHUB_PROFILE_RETENTION_DAYS`` after its last attempt (the cron attempts every tracked
          login daily, so: after it was untracked). Not at once: an untrack by mistake, or a user
          who tracks the login again soon (or another user who starts tracking it), keeps its
          history, which cannot be fetched again from GitHub. The attempt's row is what says when
          the login was last snapshotted, so it is kept exactly as long.

        Each kind is deleted in chunks of at most ``chunk_size`` rows, one transaction each, so no
        statement nears the statement timeout however much has piled up. A chunk locks its rows
        first (its own statement, oldest first), then deletes them with the condition checked again
        in a statement whose snapshot follows the locks: a login fetched while the chunk waits for
        its row gets out by its new ``fetched_at``; one tracked before the chunk got the lock is seen
        as tracked (tracking holds the profile's and attempt's rows ``FOR KEY SHARE`` while it writes
        the tracked row, so it either commits before the chunk's lock or waits for the chunk to end,
        then finds the profile gone and looks it up again: ``track``)."""
        assert chunk_size >= 2, "a chunk holds a login and at least one of its snapshots"
        now = self.clock()
        unused_before = now - timedelta(days=self.settings.github_profile_retention_days)
        taken_before = now.date() - timedelta(days=self.settings.github_snapshot_retention_days)
        forgotten, forgotten_snapshots = await self._purge_forgotten_logins(unused_before, chunk_size)
        old_snapshots = await self._purge_old_snapshots(taken_before, chunk_size)
        profiles = await self._purge_profiles(unused_before, chunk_size)
        purged = RetentionPurge(
            profiles=profiles, snapshots=forgotten_snapshots + old_snapshots, forgotten_logins=forgotten
        )
        log.info(
            "github_retention_purged",
            profiles=profiles,
            snapshots_untracked=forgotten_snapshots,
            snapshots_old=old_snapshots,
            forgotten_logins=forgotten,
        )
        return purged

    async def _purge_profiles(self, fetched_before: datetime, chunk_size: int) -> int:
        purged = 0
        while True:
            async with self.db.transaction() as uow:
                logins = await queries.lock_expired_github_profiles(
                    uow.conn, fetched_before=fetched_before, chunk_size=chunk_size
                )
                if logins:
                    purged += await queries.delete_expired_github_profiles(
                        uow.conn, logins=logins, fetched_before=fetched_before
                    )
            if len(logins) < chunk_size:
                return purged

    async def _purge_old_snapshots(self, taken_before: date, chunk_size: int) -> int:
        async def chunk(uow: UnitOfWork) -> int:
            return await queries.delete_old_github_snapshots(
                uow.conn, taken_before=taken_before, chunk_size=chunk_size
            )

        return await self.db.delete_in_chunks(chunk)

    async def _purge_forgotten_logins(self, attempted_before: datetime, chunk_size: int) -> tuple[int, int]:
        """(logins, snapshots) deleted. A chunk locks up to half its rows' worth of logins and deletes
        their snapshots in the rest; their attempts go (with the chunk's last snapshots) once a
        chunk's snapshots come back short, so a login's row outlives its snapshots, never the reverse."""
        logins_per_chunk = chunk_size // 2
        forgotten = snapshots = 0
        while True:
            async with self.db.transaction() as uow:
                logins = await queries.lock_forgotten_github_logins(
                    uow.conn, attempted_before=attempted_before, chunk_size=logins_per_chunk
                )
                if not logins:
                    return forgotten, snapshots
                room = chunk_size - len(logins)
                deleted = await queries.delete_forgotten_github_snapshots(
                    uow.conn, logins=logins, attempted_before=attempted_before, chunk_size=room
                )
                snapshots += deleted
                if deleted < room:
                    forgotten += await queries.delete_forgotten_github_attempts(
                        uow.conn, logins=logins, attempted_before=attempted_before
                    )
            if deleted < room and len(logins) < logins_per_chunk:
                return forgotten, snapshots

    async def history(self, login: str, first_day: date | None, last_day: date | None) -> HistoryOut:
        last = last_day or self.clock().date()
        first = first_day or _default_first_day(last)
        if first > last:
            raise InvalidRangeError("query.from must not be after query.to.")
        span = (last - first).days + 1
        if span > self.settings.github_history_max_days:
            raise InvalidRangeError(
                f"query.from..query.to spans {span} days; at most {self.settings.github_history_max_days}."
            )
        async with self.db.transaction() as uow:
            rows = await queries.list_github_snapshots(uow.conn, login=login, first_day=first, last_day=last)
        points: list[HistoryPoint] = []
        previous: GithubSnapshot | None = None
        segment_start = 0
        for index, row in enumerate(rows):
            same_account = previous is not None and _same_account(previous, row)
            if previous is not None and not same_account:
                segment_start = index
            points.append(
                HistoryPoint(
                    date=row.taken_on,
                    taken_at=row.taken_at,
                    github_id=row.github_id,
                    followers=row.followers,
                    following=row.following,
                    public_repos=row.public_repos,
                    repos_counted=row.repos_counted,
                    total_stars=row.total_stars,
                    total_forks=row.total_forks,
                    language_bytes=dict(row.language_bytes),
                    change=_change(previous, row) if previous is not None and same_account else None,
                    days_since_previous=(row.taken_on - previous.taken_on).days if previous else None,
                )
            )
            previous = row
        segment = rows[segment_start:]
        deltas = _change(segment[0], segment[-1]) if len(segment) >= 2 else None
        return HistoryOut(
            username=login,
            from_=first,
            to=last,
            points=points,
            deltas=deltas,
            deltas_from=segment[0].taken_on if segment else None,
        )


def snapshot_day(now: datetime, snapshot_hour_utc: int) -> date:
    """The snapshot day ``now`` belongs to: day D runs from ``snapshot_hour_utc`` (UTC) on D to the
    same hour on D + 1, so the hours after midnight still belong to the day before."""
    return (now.astimezone(UTC) - timedelta(hours=snapshot_hour_utc)).date()


def _default_first_day(last: date) -> date:
    """The first day of the default 30-day range ending ``last``. ``to`` is the client's: a day near
    the start of the calendar leaves no room for 29 earlier days, a 400 naming it (not an overflow)."""
    try:
        return last - timedelta(days=DEFAULT_HISTORY_DAYS - 1)
    except OverflowError:
        raise InvalidRangeError(
            f"query.to: the default range is the {DEFAULT_HISTORY_DAYS} days ending query.to, "
            "which starts before the first representable day; give query.from too."
        ) from None


def _is_outage(exc: GitHubError) -> bool:
    """A failure of GitHub or of its quota for every login (the snapshot cron pauses), not of one
    login (a 404, a blocked profile, an answer that is not GitHub's: that login is skipped)."""
    return isinstance(exc, GitHubRateLimitError | GitHubBusyError | GitHubDownError) and not isinstance(
        exc, GitHubRefusedError | GitHubAnswerRefusedError
    )


def _same_account(before: GithubSnapshot, after: GithubSnapshot) -> bool:
    """Whether two snapshots of a login are of one GitHub account (an unknown id, recorded before
    ids were, is taken as the same: nothing says otherwise)."""
    return before.github_id is None or after.github_id is None or before.github_id == after.github_id


def _change(before: GithubSnapshot, after: GithubSnapshot) -> Change:
    old_bytes: dict[str, int] = dict(before.language_bytes)
    new_bytes: dict[str, int] = dict(after.language_bytes)
    language_delta = {
        name: new_bytes.get(name, 0) - old_bytes.get(name, 0)
        for name in sorted(set(old_bytes) | set(new_bytes))
        if new_bytes.get(name, 0) != old_bytes.get(name, 0)
    }
    return Change(
        followers=after.followers - before.followers,
        following=after.following - before.following,
        public_repos=after.public_repos - before.public_repos,
        repos_counted=after.repos_counted - before.repos_counted,
        total_stars=after.total_stars - before.total_stars,
        total_forks=after.total_forks - before.total_forks,
        language_bytes=language_delta,
    )
