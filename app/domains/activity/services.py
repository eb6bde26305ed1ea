"""The activity feed: events stored and grouped as they arrive, read back per reader.

Design, in short (each part is documented where it lives):

- Writing (``writer.py``, ``grouping.py``): batches from the ``feed`` queue are stored under one
  writer lock, so event ids follow commit order; each event joins a group decided once, by one
  Python function, and the group's totals, actors and objects are kept exact as events arrive.
- Reading (``sql/queries/activity.sql``): permissions are applied in SQL, at read time, before any
  limit; groups are walked by their last event up to a snapshot, so cursors are stable while events
  arrive and there is no page cap. Counts, samples, actor counts and "N others" cover only what the
  reader may see and what the filters select.
- Read state: ``seen`` (the bell), and ``read`` through three marks: everything up to an event,
  a group up to an event (later events make it unread again), single events.
- Live (``stream.py``): Server-Sent Events of new and changed groups, woken by a notice published
  after each batch commits, always answered from PostgreSQL with the same permission query; each
  lives while its access token does, and the process's streams share their slots and their end
  (``live.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.cache import Flights, single_flight
from app.core.channels import Broadcaster
from app.core.db import Database, UnitOfWork
from app.core.errors import NotFoundError
from app.core.pagination import IdCursor, InvalidCursorError, Page, decode_cursor, encode_cursor
from app.core.stops import StreamStops
from app.core.types import MAX_ID
from app.db import activity as queries
from app.domains.activity.cache import FeedCache
from app.domains.activity.combiner import Combiner
from app.domains.activity.grouping import RULE_VERSION, GroupingRule
from app.domains.activity.live import LiveStreams
from app.domains.activity.recovery import recover_lost_events
from app.domains.activity.schemas import (
    UNREAD_COUNT_CAP,
    ActorOut,
    EventOut,
    EventPage,
    FeedCursor,
    FeedFilters,
    FeedGroupOut,
    FeedPage,
    ObjectOut,
    ProjectRef,
    UnreadCountsOut,
)
from app.domains.activity.verbs import MAX_SAMPLE, Verb, object_phrase, sentence, spec_of
from app.domains.activity.writer import FeedWriter, Recorded

if TYPE_CHECKING:
    from app.domains.accounts.services import AccountService

COMBINED_EVENTS = 5000
"""At most this many events (or FEED_BATCH_SIZE, if larger) in one combined transaction."""

PRIVATE_PURGE_CHUNK = 500
"""Groups per transaction of the private groups' retention (their events, tens each, cascade)."""

DEFAULT_PAGE = 20
"""The feed's page size when the client names none. Fewer groups than the usual 50 rows: each group
carries its samples. Only this size's first page is cached (one entry per reader)."""

FEED_WALK_MAX_EVENTS = 100_000
"""A walk's cursor whose snapshot is more events than this behind the newest is refused (400
``invalid-cursor``: start again from the first page). Each page of a walk reads the groups of the
reader's projects that grew after its snapshot; a cursor from long ago, or a forged one
(``cursor=0.0``), read every group the reader may see: 0.7 s a page for a member of 1,000 projects,
and thirty such pages at once took the pool from every other request (the memberships review).
Those groups are at most the events since the snapshot, so this bounds what a page reads (~70 ms at
its worst); a walk a reader pages through keeps far inside it."""

CHANNEL = "activity:changes"
"""The pub/sub channel of change notices (``Notice``); streams subscribe to it."""


class Notice(msgspec.Struct, frozen=True):
    """Published after a batch commits: enough for a stream to tell whether to look."""

    seq: int
    projects: list[int]
    audiences: list[int]
    users: list[int]


def grouping_rule(settings: Settings) -> GroupingRule:
    return GroupingRule(RULE_VERSION, settings.feed_group_window_s, settings.feed_group_max_span_s)


_PAGE = msgspec.msgpack.Decoder(FeedPage)
_COUNTS = msgspec.msgpack.Decoder(UnreadCountsOut)


Changes = tuple[list[FeedGroupOut], int, bool]
"""``ActivityService.changes``: the groups, the position reached, whether more follow."""


class ActivityService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        broadcaster: Broadcaster,
        cache: FeedCache,
        valkey: Valkey,
        accounts: AccountService | None = None,
        stops: StreamStops | None = None,
    ) -> None:
        """``accounts`` decides whether a live stream's access token is still good (absent only in
        assemblies without accounts, where nobody can open a stream); ``stops`` ends the live streams
        when the process stops (``Services.stream_stops``; a service of its own has its own)."""
        self.db = db
        self.settings = settings
        self.broadcaster = broadcaster
        self.cache = cache
        self.accounts = accounts
        self.streams = LiveStreams(valkey, settings, stops or StreamStops())
        self.writer = FeedWriter(grouping_rule(settings))
        self.combiner = Combiner(self._write_alone, max_events=max(settings.feed_batch_size, COMBINED_EVENTS))
        self._change_reads: Flights = {}
        """The reads of ``changes`` under way, by (reader, after, limit, notice)."""

    # -- writing ---------------------------------------------------------------------------------

    async def record_batch(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Store and group a batch of outbox events (the ``feed`` queue's job); returns how many were
        new. Redelivered events are skipped, so a batch may run any number of times. Batches that
        arrive together in one process share a transaction (``combiner.py``)."""
        return await self.combiner.submit(events)

    async def recover_lost_events(self) -> int:
        """Record the events whose jobs were lost (the cron; ``recovery.py``); returns how many."""
        return await recover_lost_events(self.db, self.record_batch)

    async def purge_private_groups(self, *, chunk_size: int = PRIVATE_PURGE_CHUNK) -> int:
        """Delete the groups no project holds whose last event is older than
        ``FEED_PRIVATE_RETENTION_DAYS`` (the daily cron), with their events and read marks, in chunks;
        returns how many groups. Without it a reader's own events (orders) were kept for good."""
        days = self.settings.feed_private_retention_days

        async def chunk(uow: UnitOfWork) -> int:
            return await queries.purge_old_private_groups(
                uow.conn, retention_days=days, chunk_size=chunk_size
            )

        return await self.db.delete_in_chunks(chunk)

    async def _write_alone(self, events: list[Mapping[str, Any]]) -> Recorded:
        async with self.db.transaction() as uow:
            return await self.record(uow, events)

    async def record(self, uow: UnitOfWork, events: Sequence[Mapping[str, Any]]) -> Recorded:
        """``record_batch`` inside the caller's transaction; streams are told once it commits."""
        recorded = await self.writer.record(uow, events)
        if recorded.event_ids:
            notice = Notice(
                seq=recorded.last_id,
                projects=recorded.project_ids,
                audiences=recorded.audience_ids,
                users=recorded.user_ids,
            )

            async def publish() -> None:
                await self.cache.events_stored(notice.seq, notice.projects, notice.audiences)
                await self.broadcaster.publish(msgspec.json.encode(notice), [CHANNEL])

            uow.after_commit(publish)
        return recorded

    # -- reading ---------------------------------------------------------------------------------

    async def feed(self, reader_id: int, filters: FeedFilters, cursor: str | None, limit: int) -> FeedPage:
        """The groups the reader may see, newest activity first; ``cursor`` continues a walk.

        The unfiltered first page of the default size is answered from the cache (``cache.py``)
        while it is current; other sizes read through, so a reader keeps one entry, not one per
        ``limit``."""
        if cursor is None and limit == DEFAULT_PAGE and filters == FeedFilters():

            async def load() -> bytes:
                return msgspec.msgpack.encode(await self._feed(reader_id, filters, None, limit))

            cached = await self.cache.read(reader_id, f"page{limit}", self._scope(reader_id), load)
            return _PAGE.decode(cached)
        return await self._feed(reader_id, filters, cursor, limit)

    async def _feed(self, reader_id: int, filters: FeedFilters, cursor: str | None, limit: int) -> FeedPage:
        at = decode_cursor(cursor, FeedCursor) if cursor else None
        async with self.db.read() as uow:
            if (
                at is not None
                and (await queries.feed_head(uow.conn) or 0) - at.snapshot > FEED_WALK_MAX_EVENTS
            ):
                raise InvalidCursorError(
                    f"This walk through the feed began more than {FEED_WALK_MAX_EVENTS:,} events ago (or the "
                    "cursor was not one of ours): start again from the first page."
                )
            rows = await self._page(uow, reader_id, filters, at, limit + 1)
            if not rows:
                return Page(items=[])
            snapshot = rows[0][2]
            shown = rows[:limit]
            groups = await self._groups(uow, reader_id, [row[0] for row in shown], snapshot, filters.actor_id)
        more = len(rows) > limit
        next_cursor = encode_cursor(FeedCursor(snapshot, shown[-1][1])) if more else None
        return Page(items=groups, next_cursor=next_cursor)

    async def project_feed(
        self, reader_id: int, project_id: int, filters: FeedFilters, cursor: str | None, limit: int
    ) -> FeedPage:
        """One project's feed: 404 for a reader who is not a member (nor an administrator)."""
        async with self.db.read() as uow:
            readable = await queries.can_read_project_feed(
                uow.conn, project_id=project_id, reader_id=reader_id
            )
        if not readable:
            raise NotFoundError("No such project.")
        return await self.feed(
            reader_id, msgspec.structs.replace(filters, project_id=project_id), cursor, limit
        )

    async def group(self, reader_id: int, key: str, filters: FeedFilters) -> FeedGroupOut:
        async with self.db.read() as uow:
            found = await self._visible_group(uow, reader_id, key, filters)
            groups = await self._groups(uow, reader_id, [found.id], found.snapshot, filters.actor_id)
        if not groups:
            raise NotFoundError("No such group.")
        return groups[0]

    async def group_events(
        self, reader_id: int, key: str, filters: FeedFilters, cursor: str | None, limit: int
    ) -> EventPage:
        """A group's events the reader may see and the filters select, newest first."""
        before = decode_cursor(cursor, IdCursor).id if cursor else MAX_ID
        async with self.db.read() as uow:
            found = await self._visible_group(uow, reader_id, key, filters)
            rows = await queries.group_events(
                uow.conn,
                reader_id=reader_id,
                group_id=found.id,
                before=before,
                actor_id=filters.actor_id,
                row_limit=limit + 1,
            )
        shown = rows[:limit]
        items = [_event_out(row) for row in shown]
        more = len(rows) > limit
        return Page(items=items, next_cursor=encode_cursor(IdCursor(shown[-1].id)) if more else None)

    async def unread_counts(self, reader_id: int) -> UnreadCountsOut:
        async def load() -> bytes:
            async with self.db.read() as uow:
                marks = await queries.reader_marks(uow.conn, reader_id=reader_id)
                row = await queries.unread_counts(
                    uow.conn,
                    reader_id=reader_id,
                    read_through=marks.read_through if marks else 0,
                    seen_through=marks.seen_through if marks else 0,
                    row_limit=UNREAD_COUNT_CAP + 1,
                )
            counts = (
                UnreadCountsOut(
                    unread=min(row.unread, UNREAD_COUNT_CAP),
                    unseen=min(row.unseen, UNREAD_COUNT_CAP),
                    capped=row.unread > UNREAD_COUNT_CAP,
                )
                if row
                else UnreadCountsOut(0, 0)
            )
            return msgspec.msgpack.encode(counts)

        return _COUNTS.decode(await self.cache.read(reader_id, "unread", self._scope(reader_id), load))

    def _scope(self, reader_id: int) -> Callable[[], Awaitable[tuple[bool, frozenset[int]]]]:
        return partial(self.reader_scope, reader_id)

    @staticmethod
    async def forget_names(uow: UnitOfWork, user_id: int, _actor: int) -> None:
        """An account's erasure (``AccountService.before_erasure``): the feed reads members' names from
        their accounts, but the previous release's worker stored them, and runs beside this release
        for the length of an upgrade (``ForgetUserNames``)."""
        await queries.forget_user_names(uow.conn, user_id=user_id)

    async def latest_seq(self) -> int:
        async with self.db.transaction() as uow:
            return await queries.latest_activity_seq(uow.conn) or 0

    async def reader_scope(self, reader_id: int) -> tuple[bool, frozenset[int]]:
        """(is administrator, projects) now: what a stream checks notices against, and whose
        versions make the cached answers' stamp (``cache.py``)."""
        async with self.db.read() as uow:
            row = await queries.reader_scope(uow.conn, reader_id=reader_id)
        return (row.is_admin, frozenset(row.project_ids)) if row else (False, frozenset())

    async def session_valid(self, caller: CurrentUser) -> bool:
        """``caller``'s session is still accepted (``AccountService.still_authenticated``: not
        expired, not revoked), in memory while the revocation listener is connected."""
        if self.accounts is None:
            return True
        return await self.accounts.still_authenticated(caller)

    async def changes(self, reader_id: int, after: int, limit: int, *, notice: int | None = None) -> Changes:
        """The first ``limit`` visible groups with activity after ``after`` (oldest change first), as
        they are now, the position reached (the newest event they count), and whether more follow.

        The streams of one reader woken by one notice ask the same: one read answers them all (an
        account holds up to ``FEED_STREAM_MAX_PER_USER`` streams, and one task written woke each of
        every member's; the cost review). ``notice``: the ``seq`` of the newest notice the caller was
        woken by; a read is shared only by callers woken by the same one, so it began after the commit
        each was told of. Without it (a heartbeat's check), the caller reads alone."""
        if notice is None:
            return await self._read_changes(reader_id, after, limit)
        return await single_flight(
            self._change_reads,
            (reader_id, after, limit, notice),
            partial(self._read_changes, reader_id, after, limit),
        )

    async def _read_changes(self, reader_id: int, after: int, limit: int) -> Changes:
        async with self.db.read() as uow:
            rows = await queries.feed_changes(uow.conn, reader_id=reader_id, after=after, row_limit=limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            if not rows:
                return [], after, more
            snapshot = max(row.last_seq for row in rows)
            groups = await self._groups(uow, reader_id, [row.id for row in rows], snapshot, None)
        return groups, snapshot, more

    # -- read state ------------------------------------------------------------------------------

    async def mark_seen(self, reader_id: int, through: int | None) -> None:
        """The bell was opened: groups with activity up to ``through`` (default: now) are seen."""
        async with self.db.transaction() as uow:
            uow.after_commit(partial(self.cache.read_state_changed, reader_id))
            await queries.mark_feed_seen(uow.conn, reader_id=reader_id, through=_through(through))

    async def mark_all_read(self, reader_id: int, through: int | None) -> None:
        """Every event up to ``through`` (default: now) is read."""
        async with self.db.transaction() as uow:
            uow.after_commit(partial(self.cache.read_state_changed, reader_id))
            await queries.mark_feed_read_through(uow.conn, reader_id=reader_id, through=_through(through))
            groups = await queries.groups_with_event_reads(uow.conn, reader_id=reader_id)
            await self._compact(uow, reader_id, groups)

    async def mark_group_read(self, reader_id: int, key: str, through: int | None) -> None:
        """The group is read up to ``through`` (default: its last event); it is unread again when it
        grows. 404 for a group the reader may not see."""
        async with self.db.transaction() as uow:
            uow.after_commit(partial(self.cache.read_state_changed, reader_id))
            found = await self._visible_group(uow, reader_id, key, FeedFilters())
            await queries.lock_activity_groups(uow.conn, group_ids=[found.id])
            await queries.mark_group_read(
                uow.conn, reader_id=reader_id, group_id=found.id, through=_through(through)
            )
            await self._compact(uow, reader_id, [found.id], locked=True)

    async def mark_events_read(self, reader_id: int, event_ids: list[int]) -> int:
        """Marks single events read; ids the reader may not see are ignored. Returns how many counted.

        The events are read again once their groups are locked, in a statement of its own: a project
        deletion's purge chunk that deleted some meanwhile held those locks (PurgeProjectGroupIds), and
        a mark referring to a deleted event would fail its foreign key."""
        async with self.db.transaction() as uow:
            uow.after_commit(partial(self.cache.read_state_changed, reader_id))
            visible = await queries.visible_events(
                uow.conn, event_ids=sorted(set(event_ids)), reader_id=reader_id
            )
            if not visible:
                return 0
            group_ids = sorted({row.group_id for row in visible})
            kept = set(await self._lock_groups(uow, group_ids))
            visible = await queries.visible_events(
                uow.conn, event_ids=[row.id for row in visible], reader_id=reader_id
            )
            visible = [row for row in visible if row.project_id is None or row.project_id in kept]
            if not visible:
                return 0
            await queries.insert_event_reads(
                uow.conn,
                reader_id=reader_id,
                event_ids=[row.id for row in visible],
                group_ids=[row.group_id for row in visible],
            )
            await self._compact(uow, reader_id, group_ids, locked=True)
        return len(visible)

    # -- helpers ---------------------------------------------------------------------------------

    async def _compact(
        self, uow: UnitOfWork, reader_id: int, group_ids: list[int], locked: bool = False
    ) -> None:
        """Keep the marks compact (see CompactGroupReads). The groups are locked first, in a statement
        of their own, so the check that follows sees every event committed before the lock."""
        if group_ids:
            if not locked:
                await self._lock_groups(uow, group_ids)
            await queries.compact_group_reads(uow.conn, reader_id=reader_id, group_ids=group_ids)
        await queries.drop_covered_event_reads(uow.conn, reader_id=reader_id)

    @staticmethod
    async def _lock_groups(uow: UnitOfWork, group_ids: list[int]) -> list[int]:
        """Lock the groups (in id order), their projects first, in a project deletion's order: a
        deletion that came first took its groups and events along; one that comes later waits.
        Returns the projects kept (a group without a project is private: never deleted with one)."""
        kept = await queries.keep_projects_of_groups(uow.conn, group_ids=group_ids)
        await queries.lock_activity_groups(uow.conn, group_ids=group_ids)
        return kept

    async def _page(
        self, uow: UnitOfWork, reader_id: int, filters: FeedFilters, at: FeedCursor | None, row_limit: int
    ) -> list[tuple[int, int, int]]:
        snapshot, before = (at.snapshot, at.position) if at else (None, None)
        verb = filters.verb.value if filters.verb else None
        object_type = filters.object_type.value if filters.object_type else None
        if filters.actor_id is None:
            rows = await queries.feed_page(
                uow.conn,
                reader_id=reader_id,
                snapshot=snapshot,
                before=before,
                project_id=filters.project_id,
                verb=verb,
                object_type=object_type,
                row_limit=row_limit,
            )
            return [(row.id, row.position, row.snapshot) for row in rows]
        by_actor = await queries.feed_page_by_actor(
            uow.conn,
            reader_id=reader_id,
            snapshot=snapshot,
            before=before,
            actor_id=filters.actor_id,
            project_id=filters.project_id,
            verb=verb,
            object_type=object_type,
            row_limit=row_limit,
        )
        return [(row.id, row.position, row.snapshot) for row in by_actor]

    async def _visible_group(
        self, uow: UnitOfWork, reader_id: int, key: str, filters: FeedFilters
    ) -> queries.VisibleGroupByKeyRow:
        found = await queries.visible_group_by_key(
            uow.conn,
            key=key,
            reader_id=reader_id,
            project_id=filters.project_id,
            verb=filters.verb.value if filters.verb else None,
            object_type=filters.object_type.value if filters.object_type else None,
            actor_id=filters.actor_id,
        )
        if found is None:
            raise NotFoundError("No such group.")
        return found

    async def _groups(
        self, uow: UnitOfWork, reader_id: int, ids: list[int], snapshot: int, actor_id: int | None
    ) -> list[FeedGroupOut]:
        """The groups as the reader sees them at ``snapshot``: from their stored totals when those are
        right (the usual case), else recomputed from their events (see FeedGroups)."""
        stored = await queries.stored_feed_groups(
            uow.conn, reader_id=reader_id, group_ids=ids, snapshot=snapshot, actor_id=actor_id
        )
        rows: dict[int, queries.StoredFeedGroupsRow | queries.FeedGroupsRow] = {
            row.id: row for row in stored if row.stored
        }
        others = [group_id for group_id in ids if group_id not in rows]
        if others:
            recomputed = await queries.feed_groups(
                uow.conn, reader_id=reader_id, group_ids=others, snapshot=snapshot, actor_id=actor_id
            )
            rows.update((row.id, row) for row in recomputed)
        return [_group_out(rows[i]) for i in ids if i in rows and rows[i].event_count > 0]


def _through(through: int | None) -> int:
    return MAX_ID if through is None else through


def _read_as(row: queries.StoredFeedGroupsRow | queries.FeedGroupsRow) -> str:
    """The verb whose sentence the group reads as: its own, but for a leaving stored before
    ``member.left`` existed (``member.removed`` by the member alone), which reads as one. The group
    keeps its stored verb on the wire and for the ``verb`` filter."""
    if (
        row.verb == Verb.MEMBER_REMOVED
        and row.actor_count == row.object_count == 1
        and row.actor_ids == row.object_ids
    ):
        return Verb.MEMBER_LEFT
    return row.verb


def _group_out(row: queries.StoredFeedGroupsRow | queries.FeedGroupsRow) -> FeedGroupOut:
    actors = [
        ActorOut(id=actor_id, name=name)
        for actor_id, name in zip(row.actor_ids or [], row.actor_names or [], strict=True)
    ]
    objects = [
        ObjectOut(type=row.object_type, id=object_id, title=title, deleted=deleted)
        for object_id, title, deleted in zip(
            row.object_ids or [], row.object_titles or [], row.object_deleted or [], strict=True
        )
    ]
    target = (
        ObjectOut(type=row.target_type, id=row.target_id, title=row.target_title, deleted=row.target_deleted)
        if row.target_type is not None and row.target_id is not None
        else None
    )
    project = (
        ProjectRef(id=row.project_id, name=row.project_name)
        if row.project_id is not None and row.project_name is not None
        else None
    )
    text = sentence(
        _read_as(row),
        actor_names=[actor.name for actor in actors],
        actor_count=row.actor_count,
        object_type=row.object_type,
        objects=[(o.id, o.title, o.deleted) for o in objects],
        object_count=row.object_count,
        event_count=row.event_count,
        project=project.name if project else None,
        target=(
            object_phrase(target.type, target.id, target.title, target.deleted, with_noun=False)
            if target
            else None
        ),
    )
    return FeedGroupOut(
        key=row.key,
        rule_version=row.rule_version,
        text=text,
        verb=row.verb,
        object_type=row.object_type,
        count=row.event_count,
        actors=actors,
        actor_count=row.actor_count,
        objects=objects,
        object_count=row.object_count,
        truncated=row.object_count > len(objects) or row.actor_count > len(actors),
        project=project,
        target=target,
        private=row.audience_user_id is not None,
        first_at=row.first_at,
        last_at=row.last_at,
        last_event_id=row.last_seq,
        unread=row.unread,
    )


def _event_out(row: queries.GroupEventsRow) -> EventOut:
    spec = spec_of(row.verb)
    data = row.data if isinstance(row.data, dict) else {}
    details = {key: data[key] for key in (spec.details if spec else ()) if key in data}
    return EventOut(
        id=row.id,
        actor=ActorOut(id=row.actor_id, name=row.actor_name),
        verb=row.verb,
        object=ObjectOut(
            type=row.object_type, id=row.object_id, title=row.object_title, deleted=row.object_deleted
        ),
        occurred_at=row.occurred_at,
        read=row.read,
        details=details,
    )


__all__ = ["CHANNEL", "MAX_SAMPLE", "ActivityService", "Notice"]
