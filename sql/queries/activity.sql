-- The activity feed (app/domains/activity). Who may see what is decided here, at read time, before
-- any LIMIT: a group is visible when activity_may_see() says so (the migration defines it once);
-- the hot paths spell the same rule as index ranges (the reader's projects, their private groups,
-- everything for administrators) and the property tests hold both to one reference.

-- ---------------------------------------------------------------------------------------- writing

-- name: LockActivityWriter :exec
-- One feed writer at a time (held until commit): event ids are then assigned in commit order, and
-- two batches never disagree about which group an event joins.
select pg_advisory_xact_lock(hashtextextended('activity.writer', 0));

-- name: KeepProjects :many
-- The batch's projects, locked against deletion until the writer commits (FOR KEY SHARE, in id
-- order; what the groups' foreign-key checks take anyway), before NewActivityEvents checks that
-- they exist: a deletion that committed first drops their events there, one that comes later waits
-- (else the events could join a group the deletion is removing: a foreign-key violation, or a
-- deadlock with the deletion's cascade over several groups).
select id from projects where id = any(@project_ids::bigint[]) order by id for key share;

-- name: NewActivityEvents :many
-- The outbox ids of a batch's events worth storing: not stored yet (delivery is at least once), and
-- whose actor, project and audience still exist (an event of a project deleted before it was
-- delivered is dropped, not retried forever). Arrays are zipped by position.
select t.outbox_id::bigint as outbox_id
from (
    select unnest(@outbox_ids::bigint[]) as outbox_id, unnest(@actor_ids::bigint[]) as actor_id,
           unnest(@project_ids::bigint[]) as project_id, unnest(@audience_ids::bigint[]) as audience_id
) t
where not exists (select 1 from activity_events e where e.outbox_id = t.outbox_id)
  and exists (select 1 from users u where u.id = t.actor_id)
  and (t.project_id is null or exists (select 1 from projects p where p.id = t.project_id and p.deleting_since is null))
  and (t.audience_id is null or exists (select 1 from users u where u.id = t.audience_id));

-- name: ActivityRecoveryMark :one
select coalesce((select checked_through from activity_recovery), 0)::bigint as checked_through;

-- name: SettledFeedOutbox :many
-- The feed's outbox rows after @after_id that are settled, in id order (at most @row_limit read): the
-- rows before the first one not published before the horizon. The horizon is @grace_s ago, or the
-- start of the oldest transaction still writing if earlier: a row it has yet to commit has a higher
-- id than every row published before it began, so none is passed before it is visible. One row per
-- settled row whose event is not stored (its payload; settled = 0), then, if any row is settled, the
-- last settled id with how many were settled (payload null).
with horizon as (
    select least(
        now() - make_interval(secs => @grace_s::float8),
        coalesce(oldest_open_write_started_at(), 'infinity')
    ) as at
), candidates as (
    select o.id, o.published_at
    from outbox o
    -- RECORD_ACTIVITY_TASK written here, not a parameter: outbox_feed_idx's predicate must be the
    -- query's under a generic plan too
    where o.id > @after_id and o.task = 'record_activity'
    order by o.id
    limit @row_limit
), settled as (
    select c.id from candidates c
    where c.id < coalesce(
        (select min(u.id) from candidates u where u.published_at is null or u.published_at >= (select at from horizon)),
        9223372036854775807
    )
)
select s.id, o.payload, 0 as settled
from settled s
join outbox o on o.id = s.id
left join activity_events e on e.outbox_id = s.id
where e.outbox_id is null
union all
select max(s.id), null::jsonb, count(*)::integer from settled s having count(*) > 0
order by 3, 1;

-- name: FirstFeedOutboxAfter :one
-- The feed's first outbox row after @after_id (the recovery's mark): when it was published (null: not
-- yet), and PostgreSQL's now. A walk that settles nothing while this row was published long ago is
-- held back by an open transaction (oldest_open_write_started_at).
select o.id, o.published_at, now()::timestamptz as checked_at
from outbox o
where o.id > @after_id and o.task = 'record_activity'
order by o.id
limit 1;

-- name: SetActivityRecoveryMark :exec
insert into activity_recovery as r (checked_through) values (@checked_through)
on conflict (id) do update set checked_through = greatest(r.checked_through, excluded.checked_through);

-- name: OpenActivityGroups :many
-- The groups of each stream an event of the batch may join (app.domains.activity.grouping): those
-- whose last event is at most @window_s seconds before the stream's @earliest event in the batch,
-- the @most with the latest last events. An on-time event finds its stream's newest group alone; a
-- late one (a recovered delivery) the older group its time falls in.
select g.id, g.key, g.stream, g.rule_version, g.window_s, g.max_span_s, g.first_at, g.last_at
from (select unnest(@streams::text[]) as stream, unnest(@earliest::timestamptz[]) as earliest) s
cross join lateral (
    select g.id, g.key, g.stream, g.rule_version, g.window_s, g.max_span_s, g.first_at, g.last_at
    from activity_groups g
    where g.stream = s.stream and g.last_at >= s.earliest - make_interval(secs => @window_s::integer)
    order by g.last_at desc, g.id desc
    limit @most::integer
) g;

-- name: InsertActivityGroups :many
-- New groups, empty: AddEventsToActivityGroups fills their counters once their events are stored.
insert into activity_groups (
    key, rule_version, window_s, max_span_s, stream, verb, object_type, project_id, audience_user_id,
    target_type, target_id, first_at, last_at, first_seq, last_seq, event_count, actor_count, object_count
)
select t.key, @rule_version::smallint, @window_s::integer, @max_span_s::integer, t.stream, t.verb,
       t.object_type, t.project_id, t.audience_id, t.target_type, t.target_id, t.first_at, t.first_at,
       0, 0, 0, 0, 0
from (
    select unnest(@keys::text[]) as key, unnest(@streams::text[]) as stream, unnest(@verbs::text[]) as verb,
           unnest(@object_types::text[]) as object_type, unnest(@project_ids::bigint[]) as project_id,
           unnest(@audience_ids::bigint[]) as audience_id, unnest(@target_types::text[]) as target_type,
           unnest(@target_ids::bigint[]) as target_id, unnest(@first_ats::timestamptz[]) as first_at
) t
returning id, key;

-- name: InsertActivityEvents :many
-- The batch as one JSON array of event objects (one parameter: no per-element array encoding).
insert into activity_events (
    outbox_id, actor_id, verb, object_type, object_id, project_id, audience_user_id, target_type,
    target_id, data, occurred_at, group_id
)
select t.outbox_id, t.actor_id, t.verb, t.object_type, t.object_id, t.project_id, t.audience_user_id,
       t.target_type, t.target_id, t.data, t.occurred_at, t.group_id
from jsonb_to_recordset(@events::jsonb) as t(
    outbox_id bigint, actor_id bigint, verb text, object_type text, object_id bigint, project_id bigint,
    audience_user_id bigint, target_type text, target_id bigint, data jsonb, occurred_at timestamptz,
    group_id bigint
)
returning id, outbox_id;

-- name: KeepProjectsOfGroups :many
-- The groups' projects, locked against deletion until the transaction ends (FOR KEY SHARE, in id
-- order): before a reader's marks lock or refer to the groups. A project deletion locks the project,
-- then deletes its groups; locking the projects first, a deletion either committed before (its groups
-- and events are gone, and the project is not returned) or waits for this transaction.
select p.id from projects p
where p.id in (select g.project_id from activity_groups g where g.id = any(@group_ids::bigint[]))
order by p.id
for key share of p;

-- name: LockActivityGroups :many
-- Row locks on groups, always taken in id order (writer and readers alike: no deadlock). NO KEY
-- UPDATE, so foreign-key checks of concurrent inserts are not blocked.
select g.id from activity_groups g
where g.id = any(@group_ids::bigint[])
order by g.id
for no key update;

-- name: AddEventsToActivityGroups :exec
-- Adds just-stored events to their groups: per-actor and per-object rows, then the group totals.
-- Every sub-statement reads the snapshot taken before any of them writes, so `fresh_*` count the
-- (group, actor) and (group, object) pairs that did not exist yet: the new actors and objects.
-- (PostgreSQL runs a data-modifying WITH clause exactly once, whether or not anything reads it.)
with ev as (
    select e.id, e.group_id, e.actor_id, e.object_id, e.occurred_at
    from activity_events e
    where e.id = any(@event_ids::bigint[])
), fresh_actors as (
    select p.group_id, count(*)::integer as n
    from (select distinct ev.group_id, ev.actor_id from ev) p
    where not exists (
        select 1 from activity_group_actors a where a.group_id = p.group_id and a.actor_id = p.actor_id
    )
    group by p.group_id
), fresh_objects as (
    select p.group_id, count(*)::integer as n
    from (select distinct ev.group_id, ev.object_id from ev) p
    where not exists (
        select 1 from activity_group_objects o where o.group_id = p.group_id and o.object_id = p.object_id
    )
    group by p.group_id
), actors as (
    insert into activity_group_actors as a (
        group_id, actor_id, project_id, audience_user_id, event_count, first_seq, last_seq
    )
    select x.group_id, x.actor_id, g.project_id, g.audience_user_id, x.n, x.first_seq, x.last_seq
    from (
        select ev.group_id, ev.actor_id, count(*) as n, min(ev.id) as first_seq, max(ev.id) as last_seq
        from ev
        group by ev.group_id, ev.actor_id
    ) x
    join activity_groups g on g.id = x.group_id
    on conflict (group_id, actor_id) do update
    set event_count = a.event_count + excluded.event_count,
        last_seq = greatest(a.last_seq, excluded.last_seq)
), objects as (
    insert into activity_group_objects as o (group_id, object_id, event_count, last_seq)
    select ev.group_id, ev.object_id, count(*), max(ev.id)
    from ev
    group by ev.group_id, ev.object_id
    on conflict (group_id, object_id) do update
    set event_count = o.event_count + excluded.event_count,
        last_seq = greatest(o.last_seq, excluded.last_seq)
), totals as (
    select ev.group_id, count(*)::integer as n, min(ev.id) as first_seq, max(ev.id) as last_seq,
           min(ev.occurred_at) as first_at, max(ev.occurred_at) as last_at
    from ev
    group by ev.group_id
), changes as (
    select t.*, coalesce(fa.n, 0) as new_actors, coalesce(fo.n, 0) as new_objects
    from totals t
    left join fresh_actors fa on fa.group_id = t.group_id
    left join fresh_objects fo on fo.group_id = t.group_id
)
update activity_groups g
set event_count = g.event_count + c.n,
    first_seq = case when g.first_seq = 0 then c.first_seq else g.first_seq end,
    last_seq = greatest(g.last_seq, c.last_seq),
    first_at = least(g.first_at, c.first_at),
    last_at = greatest(g.last_at, c.last_at),
    actor_count = g.actor_count + c.new_actors,
    object_count = g.object_count + c.new_objects
from changes c
where g.id = c.group_id;

-- name: UpsertActivityObjects :exec
-- Titles from the events that carry one; a deletion makes the object a tombstone for good (ids are
-- never reused): its title is erased and no later event brings it back. The newest title wins by
-- outbox_id, the outbox id of the event that carried it: the order of the changes, whatever order
-- the events are recorded in (writer.object_updates); a row without one (its event purged before the
-- column existed) is older than any event. seq (the feed's event id of that event) is the previous
-- release's order, kept while it may still write.
insert into activity_objects as o (object_type, object_id, title, deleted, seq, outbox_id)
select t.object_type, t.object_id, case when t.deleted then null else t.title end, t.deleted, t.seq, t.outbox_id
from jsonb_to_recordset(@objects::jsonb) as t(
    object_type text, object_id bigint, title text, deleted boolean, seq bigint, outbox_id bigint
)
on conflict (object_type, object_id) do update
set title = case when o.deleted or excluded.deleted then null
                 when excluded.outbox_id > coalesce(o.outbox_id, 0) then coalesce(excluded.title, o.title)
                 else coalesce(o.title, excluded.title) end,
    deleted = o.deleted or excluded.deleted,
    seq = greatest(o.seq, excluded.seq),
    outbox_id = greatest(o.outbox_id, excluded.outbox_id)
-- An event repeating the title the object has still moves outbox_id on when it is newer (a rename
-- recorded after the rename back must stay older than it); an older one writes nothing.
where not o.deleted
    and (excluded.deleted or excluded.title is distinct from o.title
         or excluded.outbox_id > coalesce(o.outbox_id, 0));

-- ---------------------------------------------------------------------------------------- reading

-- name: FeedHead :one
-- The newest event id: how far behind it a walk's snapshot is (FEED_WALK_MAX_EVENTS).
select coalesce(max(id), 0)::bigint as head from activity_events;

-- name: FeedPage :many
-- One page of the groups the reader may see now, newest activity first, as of a snapshot (the
-- newest event id when the walk began, returned as `snapshot`): a group's position is its last
-- event up to the snapshot, so a group that grows during the walk keeps its place and every group
-- comes exactly once. Positions are event ids, hence unique. Filters select groups before the
-- limit; verb, object type and project are constant within a group (actor filters: FeedPageByActor).
-- Branches: each of the reader's projects (an index range read from the index alone), their
-- private groups, everything for administrators; then the groups that grew after the snapshot,
-- from the same ranges: an old or forged cursor costs what the reader may see, no more. Those
-- compare with @snapshot itself, so the planner knows it; a first page (none) has no such group.
-- `offset 0` keeps a project's range one index scan per project; the administrators' range hangs
-- off the reader's row, so another reader's request never starts it (nor parallel workers for it),
-- and leaves out the groups of projects being deleted (members lost theirs with their membership)
-- before the limit: a hashed set of the few marked projects (`public.`: `projects` is the CTE).
with reader as (
    select u.id, u.role = 'admin' as is_admin from users u where u.id = @reader_id
), snap as (
    select coalesce(sqlc.narg(snapshot)::bigint, (select max(e.id) from activity_events e), 0)::bigint as s
), bound as (
    select least(coalesce(sqlc.narg(before)::bigint, snap.s + 1), snap.s + 1)::bigint as b from snap
), projects as (
    select m.project_id
    from project_members m
    where m.user_id = @reader_id
      and not coalesce((select r.is_admin from reader r), false)
      and (sqlc.narg(project_id)::bigint is null or m.project_id = sqlc.narg(project_id)::bigint)
), settled as (
    select s.id, s.last_seq as position
    from projects p
    cross join lateral (
        select g.id, g.last_seq
        from activity_groups g
        where g.project_id = p.project_id
          and g.audience_user_id is null
          and g.last_seq < (select b from bound)
          and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
          and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
        order by g.last_seq desc
        limit @row_limit
    ) s
    union all
    (
        select g.id, g.last_seq
        from activity_groups g
        where g.audience_user_id = @reader_id
          and not coalesce((select r.is_admin from reader r), false)
          and g.last_seq < (select b from bound)
          and ((g.project_id is null and sqlc.narg(project_id)::bigint is null)
               or g.project_id in (select p.project_id from projects p))
          and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
          and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
        order by g.last_seq desc
        limit @row_limit
    )
    union all
    (
        select g.id, g.last_seq
        from activity_groups g
        where coalesce((select r.is_admin from reader r), false)
          and g.last_seq < (select b from bound)
          and (sqlc.narg(project_id)::bigint is null or g.project_id = sqlc.narg(project_id)::bigint)
          and (g.project_id is null or g.project_id not in (select pr.id from public.projects pr where pr.deleting_since is not null))
          and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
          and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
        order by g.last_seq desc
        limit @row_limit
    )
), grown as (
    select x.id, x.position
    from (
        select c.id,
               (select max(e.id) from activity_events e
                where e.group_id = c.id and e.id <= (select s from snap)) as position
        from (
            select s.id
            from projects p
            cross join lateral (
                select g.id
                from activity_groups g
                where g.project_id = p.project_id
                  and g.audience_user_id is null
                  and g.last_seq > sqlc.narg(snapshot)::bigint
                  and g.first_seq <= sqlc.narg(snapshot)::bigint
                  and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
                  and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
                offset 0
            ) s
            union all
            select g.id
            from activity_groups g
            where g.audience_user_id = @reader_id
              and not coalesce((select r.is_admin from reader r), false)
              and g.last_seq > sqlc.narg(snapshot)::bigint
              and g.first_seq <= sqlc.narg(snapshot)::bigint
              and ((g.project_id is null and sqlc.narg(project_id)::bigint is null)
                   or g.project_id in (select p.project_id from projects p))
              and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
              and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
            union all
            select s.id
            from reader r
            cross join lateral (
                select g.id
                from activity_groups g
                where r.is_admin
                  and g.last_seq > sqlc.narg(snapshot)::bigint
                  and g.first_seq <= sqlc.narg(snapshot)::bigint
                  and (sqlc.narg(project_id)::bigint is null or g.project_id = sqlc.narg(project_id)::bigint)
                  and (g.project_id is null or g.project_id not in (select pr.id from public.projects pr where pr.deleting_since is not null))
                  and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
                  and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
            ) s
        ) c
    ) x
    where x.position < (select b from bound)
)
select c.id::bigint as id, c.position::bigint as position, (select s from snap)::bigint as snapshot
from (select * from settled union all select * from grown) c
order by c.position desc
limit @row_limit;

-- name: FeedPageByActor :many
-- FeedPage filtered by actor: a group is in when the actor acted in it, and its position is the
-- actor's last event in it up to the snapshot (a group grouped by target has several actors).
-- The same branches as FeedPage, over the actor's rows of the groups (activity_group_actors, which
-- carry their group's project and audience): the actor's groups elsewhere are never read.
with reader as (
    select u.id, u.role = 'admin' as is_admin from users u where u.id = @reader_id
), snap as (
    select coalesce(sqlc.narg(snapshot)::bigint, (select max(e.id) from activity_events e), 0)::bigint as s
), bound as (
    select least(coalesce(sqlc.narg(before)::bigint, snap.s + 1), snap.s + 1)::bigint as b from snap
), projects as (
    select m.project_id
    from project_members m
    where m.user_id = @reader_id
      and not coalesce((select r.is_admin from reader r), false)
      and (sqlc.narg(project_id)::bigint is null or m.project_id = sqlc.narg(project_id)::bigint)
), settled as (
    select s.group_id as id, s.last_seq as position
    from projects p
    cross join lateral (
        select a.group_id, a.last_seq
        from activity_group_actors a
        join activity_groups g on g.id = a.group_id
        where a.actor_id = @actor_id
          and a.project_id = p.project_id
          and a.audience_user_id is null
          and a.last_seq < (select b from bound)
          and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
          and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
        order by a.last_seq desc
        limit @row_limit
    ) s
    union all
    (
        select a.group_id, a.last_seq
        from activity_group_actors a
        join activity_groups g on g.id = a.group_id
        where a.actor_id = @actor_id
          and a.audience_user_id = @reader_id
          and not coalesce((select r.is_admin from reader r), false)
          and a.last_seq < (select b from bound)
          and ((a.project_id is null and sqlc.narg(project_id)::bigint is null)
               or a.project_id in (select p.project_id from projects p))
          and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
          and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
        order by a.last_seq desc
        limit @row_limit
    )
    union all
    (
        select a.group_id, a.last_seq
        from activity_group_actors a
        join activity_groups g on g.id = a.group_id
        where coalesce((select r.is_admin from reader r), false)
          and a.actor_id = @actor_id
          and a.last_seq < (select b from bound)
          and (sqlc.narg(project_id)::bigint is null or g.project_id = sqlc.narg(project_id)::bigint)
          and (g.project_id is null or g.project_id not in (select pr.id from public.projects pr where pr.deleting_since is not null))
          and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
          and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
        order by a.last_seq desc
        limit @row_limit
    )
), grown as (
    select x.id, x.position
    from (
        select c.group_id as id,
               (select max(e.id) from activity_events e
                where e.group_id = c.group_id and e.actor_id = @actor_id
                  and e.id <= (select s from snap)) as position
        from (
            select s.group_id
            from projects p
            cross join lateral (
                select a.group_id
                from activity_group_actors a
                join activity_groups g on g.id = a.group_id
                where a.actor_id = @actor_id
                  and a.project_id = p.project_id
                  and a.audience_user_id is null
                  and a.last_seq > sqlc.narg(snapshot)::bigint
                  and a.first_seq <= sqlc.narg(snapshot)::bigint
                  and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
                  and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
                offset 0
            ) s
            union all
            select a.group_id
            from activity_group_actors a
            join activity_groups g on g.id = a.group_id
            where a.actor_id = @actor_id
              and a.audience_user_id = @reader_id
              and not coalesce((select r.is_admin from reader r), false)
              and a.last_seq > sqlc.narg(snapshot)::bigint
              and a.first_seq <= sqlc.narg(snapshot)::bigint
              and ((a.project_id is null and sqlc.narg(project_id)::bigint is null)
                   or a.project_id in (select p.project_id from projects p))
              and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
              and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
            union all
            select s.group_id
            from reader r
            cross join lateral (
                select a.group_id
                from activity_group_actors a
                join activity_groups g on g.id = a.group_id
                where r.is_admin
                  and a.actor_id = @actor_id
                  and a.last_seq > sqlc.narg(snapshot)::bigint
                  and a.first_seq <= sqlc.narg(snapshot)::bigint
                  and (sqlc.narg(project_id)::bigint is null or g.project_id = sqlc.narg(project_id)::bigint)
                  and (g.project_id is null or g.project_id not in (select pr.id from public.projects pr where pr.deleting_since is not null))
                  and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
                  and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
            ) s
        ) c
    ) x
    where x.position < (select b from bound)
)
select c.id::bigint as id, c.position::bigint as position, (select s from snap)::bigint as snapshot
from (select * from settled union all select * from grown) c
order by c.position desc
limit @row_limit;

-- name: StoredFeedGroups :many
-- FeedGroups for the usual case, read from the stored totals alone (a short plan); `stored` says
-- whether that is right for a group: untouched since @snapshot and not split by the actor filter.
-- The others are read again with FeedGroups.
-- nullable: project_name, target_type, target_id, target_title, actor_ids, actor_names, object_ids, object_titles, object_deleted
with reader as (
    select u.id, coalesce(s.read_through, 0)::bigint as read_through
    from users u
    left join activity_reader_state s on s.user_id = u.id
    where u.id = @reader_id
), page as (
    select p.id, p.ord from unnest(@group_ids::bigint[]) with ordinality as p(id, ord)
)
select g.id, g.key, g.rule_version, g.verb, g.object_type, g.project_id, pr.name as project_name,
       g.audience_user_id, g.target_type, g.target_id, t.title as target_title,
       coalesce(t.deleted, false)::boolean as target_deleted,
       g.event_count, g.first_at, g.last_at, g.last_seq, g.actor_count, g.object_count,
       ac.ids::bigint[] as actor_ids, ac.names::text[] as actor_names,
       ob.ids::bigint[] as object_ids, ob.titles::text[] as object_titles, ob.deleted::boolean[] as object_deleted,
       (g.last_seq > greatest(r.read_through, coalesce(gr.read_through, 0)))::boolean as unread,
       (g.last_seq <= @snapshot::bigint
        and (sqlc.narg(actor_id)::bigint is null or g.actor_count = 1))::boolean as stored
from page p
join activity_groups g on g.id = p.id
cross join reader r
left join projects pr on pr.id = g.project_id
left join activity_objects t on t.object_type = g.target_type and t.object_id = g.target_id
left join activity_group_reads gr on gr.user_id = r.id and gr.group_id = g.id
cross join lateral (
    select array_agg(x.actor_id order by x.last_seq desc) as ids,
           array_agg(u.display_name order by x.last_seq desc) as names
    from (
        select ga.actor_id, ga.last_seq from activity_group_actors ga
        where ga.group_id = g.id order by ga.last_seq desc limit 8
    ) x
    join users u on u.id = x.actor_id
) ac
cross join lateral (
    select array_agg(x.object_id order by x.last_seq desc) as ids,
           array_agg(coalesce(member.display_name, o.title) order by x.last_seq desc) as titles,
           array_agg(coalesce(o.deleted, false) order by x.last_seq desc) as deleted
    from (
        select go.object_id, go.last_seq from activity_group_objects go
        where go.group_id = g.id order by go.last_seq desc limit 8
    ) x
    left join activity_objects o on o.object_type = g.object_type and o.object_id = x.object_id
    left join users member on g.object_type = 'user' and member.id = x.object_id
) ob
where g.project_id is null or pr.deleting_since is null
order by p.ord;

-- name: FeedGroups :many
-- The groups of a page as the reader sees them at @snapshot, in the order given. A group untouched
-- since the snapshot and not split by an actor filter is read from its stored totals; otherwise its
-- totals, actors and objects are recomputed from exactly the events that count. Samples: the 8
-- most recent actors and objects. `unread`: an event of the group (as counted) the reader has not
-- read; for stored groups that is "last event above both read marks" (the read-state queries keep
-- the marks compact so this holds). A group of a project being deleted is left out: only an
-- administrator's page can still hold one (members lost their membership with the deletion), until
-- the purge deletes the feed's groups first. A member (a `user` object) is named from their account,
-- as actors are: the feed keeps no name of theirs, so a rename shows at once.
-- nullable: project_name, target_type, target_id, target_title, actor_ids, actor_names, object_ids, object_titles, object_deleted
with reader as (
    select u.id, coalesce(s.read_through, 0)::bigint as read_through
    from users u
    left join activity_reader_state s on s.user_id = u.id
    where u.id = @reader_id
), page as (
    select p.id, p.ord from unnest(@group_ids::bigint[]) with ordinality as p(id, ord)
)
select g.id, g.key, g.rule_version, g.verb, g.object_type, g.project_id, pr.name as project_name,
       g.audience_user_id, g.target_type, g.target_id, t.title as target_title,
       coalesce(t.deleted, false)::boolean as target_deleted,
       a.event_count::integer as event_count, a.first_at::timestamptz as first_at,
       a.last_at::timestamptz as last_at, a.last_seq::bigint as last_seq,
       a.actor_count::integer as actor_count, a.object_count::integer as object_count,
       ac.ids::bigint[] as actor_ids, ac.names::text[] as actor_names,
       ob.ids::bigint[] as object_ids, ob.titles::text[] as object_titles, ob.deleted::boolean[] as object_deleted,
       (case when st.stored
             then a.last_seq > greatest(r.read_through, coalesce(gr.read_through, 0))
             else exists (
                 select 1 from activity_events e
                 where e.group_id = g.id and e.id <= @snapshot::bigint
                   and e.id > greatest(r.read_through, coalesce(gr.read_through, 0))
                   and (sqlc.narg(actor_id)::bigint is null or e.actor_id = sqlc.narg(actor_id)::bigint)
                   and not exists (
                       select 1 from activity_event_reads er where er.user_id = r.id and er.event_id = e.id
                   )
             ) end)::boolean as unread
from page p
join activity_groups g on g.id = p.id
cross join reader r
left join projects pr on pr.id = g.project_id
left join activity_objects t on t.object_type = g.target_type and t.object_id = g.target_id
left join activity_group_reads gr on gr.user_id = r.id and gr.group_id = g.id
cross join lateral (
    select (g.last_seq <= @snapshot::bigint
            and (sqlc.narg(actor_id)::bigint is null or g.actor_count = 1)) as stored
) st
cross join lateral (
    select count(*) as event_count, min(e.occurred_at) as first_at, max(e.occurred_at) as last_at,
           max(e.id) as last_seq, count(distinct e.actor_id) as actor_count,
           count(distinct e.object_id) as object_count
    from activity_events e
    where not st.stored
      and e.group_id = g.id and e.id <= @snapshot::bigint
      and (sqlc.narg(actor_id)::bigint is null or e.actor_id = sqlc.narg(actor_id)::bigint)
) calc
cross join lateral (
    select case when st.stored then g.event_count else calc.event_count end as event_count,
           case when st.stored then g.first_at else calc.first_at end as first_at,
           case when st.stored then g.last_at else calc.last_at end as last_at,
           case when st.stored then g.last_seq else calc.last_seq end as last_seq,
           case when st.stored then g.actor_count else calc.actor_count end as actor_count,
           case when st.stored then g.object_count else calc.object_count end as object_count
) a
cross join lateral (
    select array_agg(x.actor_id order by x.seq desc) as ids, array_agg(u.display_name order by x.seq desc) as names
    from (
        (select ga.actor_id, ga.last_seq as seq
         from activity_group_actors ga
         where st.stored and ga.group_id = g.id
         order by ga.last_seq desc
         limit 8)
        union all
        (select e.actor_id, max(e.id) as seq
         from activity_events e
         where not st.stored
           and e.group_id = g.id and e.id <= @snapshot::bigint
           and (sqlc.narg(actor_id)::bigint is null or e.actor_id = sqlc.narg(actor_id)::bigint)
         group by e.actor_id
         order by 2 desc
         limit 8)
    ) x
    join users u on u.id = x.actor_id
) ac
cross join lateral (
    select array_agg(x.object_id order by x.seq desc) as ids,
           array_agg(coalesce(member.display_name, o.title) order by x.seq desc) as titles,
           array_agg(coalesce(o.deleted, false) order by x.seq desc) as deleted
    from (
        (select go.object_id, go.last_seq as seq
         from activity_group_objects go
         where st.stored and go.group_id = g.id
         order by go.last_seq desc
         limit 8)
        union all
        (select e.object_id, max(e.id) as seq
         from activity_events e
         where not st.stored
           and e.group_id = g.id and e.id <= @snapshot::bigint
           and (sqlc.narg(actor_id)::bigint is null or e.actor_id = sqlc.narg(actor_id)::bigint)
         group by e.object_id
         order by 2 desc
         limit 8)
    ) x
    left join activity_objects o on o.object_type = g.object_type and o.object_id = x.object_id
    left join users member on g.object_type = 'user' and member.id = x.object_id
) ob
where g.project_id is null or pr.deleting_since is null
order by p.ord;

-- name: VisibleGroupByKey :one
-- A group by its key when the reader may see it and it matches the filters, with the newest event
-- id (the snapshot its detail is read at). A project being deleted is gone (FeedGroups).
select g.id, g.last_seq, coalesce((select max(e.id) from activity_events e), 0)::bigint as snapshot
from activity_groups g
where g.key = @key
  and not exists (select 1 from projects p where p.id = g.project_id and p.deleting_since is not null)
  and activity_may_see(@reader_id, coalesce((select u.role = 'admin' from users u where u.id = @reader_id), false), g.project_id, g.audience_user_id)
  and (sqlc.narg(project_id)::bigint is null or g.project_id = sqlc.narg(project_id)::bigint)
  and (sqlc.narg(verb)::text is null or g.verb = sqlc.narg(verb)::text)
  and (sqlc.narg(object_type)::text is null or g.object_type = sqlc.narg(object_type)::text)
  and (sqlc.narg(actor_id)::bigint is null or exists (
      select 1 from activity_group_actors a where a.group_id = g.id and a.actor_id = sqlc.narg(actor_id)::bigint
  ));

-- name: GroupEvents :many
-- A group's events, newest first, keyset on the event id (the group's visibility is checked first).
-- nullable: object_title
select e.id, e.actor_id, u.display_name as actor_name, e.verb, e.object_type, e.object_id,
       coalesce(member.display_name, o.title) as object_title, coalesce(o.deleted, false)::boolean as object_deleted,
       e.data, e.occurred_at,
       (e.id <= greatest(
            coalesce((select s.read_through from activity_reader_state s where s.user_id = @reader_id), 0),
            coalesce((select gr.read_through from activity_group_reads gr
                      where gr.user_id = @reader_id and gr.group_id = e.group_id), 0))
        or exists (select 1 from activity_event_reads er where er.user_id = @reader_id and er.event_id = e.id)
       )::boolean as read
from activity_events e
join users u on u.id = e.actor_id
left join activity_objects o on o.object_type = e.object_type and o.object_id = e.object_id
left join users member on e.object_type = 'user' and member.id = e.object_id
where e.group_id = @group_id
  and e.id < @before::bigint
  and (sqlc.narg(actor_id)::bigint is null or e.actor_id = sqlc.narg(actor_id)::bigint)
order by e.id desc
limit @row_limit;

-- name: CanReadProjectFeed :one
-- The project exists and the reader is a member of it (any role) or an administrator.
select exists (
    select 1 from projects p
    where p.id = @project_id and p.deleting_since is null
      and (coalesce((select u.role = 'admin' from users u where u.id = @reader_id), false)
           or exists (select 1 from project_members m where m.project_id = p.id and m.user_id = @reader_id))
)::boolean as readable;

-- name: ReaderMarks :one
-- The reader's read-all mark and the last activity the bell showed them (0 when never set).
select coalesce((select s.read_through from activity_reader_state s where s.user_id = @reader_id), 0)::bigint
           as read_through,
       coalesce((select s.seen_through from activity_reader_state s where s.user_id = @reader_id), 0)::bigint
           as seen_through;

-- name: UnreadCounts :one
-- Counts over the newest @row_limit unread groups the reader may see now: unread (a group with an
-- event above both read marks; see FeedGroups) and unseen (unread, with activity after the bell was
-- last opened: the newest of them). The service asks for one more than it shows, so both are exact
-- up to its cap and the cap says "more". Each source (each of a member's projects, their private
-- groups, an administrator's everything) is read newest first from its index and stops at
-- @row_limit: the cost no longer grows with the history a reader never marks read (a year of groups
-- above read_through), only with their projects (at most @row_limit each; a member of 50 projects
-- of 300 unread groups each still reads 15,000). The read marks are parameters (ReaderMarks): read
-- by a subquery, the planner guessed a third of a project's groups above the mark and sorted them all
-- (121 projects of 487 unread groups: 241k buffers instead of 48k, about 3 times as long).
with reader as (
    select u.id, u.role = 'admin' as is_admin
    from users u
    where u.id = @reader_id
), projects as (
    select m.project_id
    from project_members m
    where m.user_id = @reader_id and not coalesce((select r.is_admin from reader r), false)
), candidates as (
    select c.last_seq
    from projects p
    cross join lateral (
        select g.last_seq
        from activity_groups g
        where g.project_id = p.project_id
          and g.audience_user_id is null
          and g.last_seq > @read_through::bigint
          and not exists (select 1 from activity_group_reads gr
                          where gr.user_id = @reader_id and gr.group_id = g.id and gr.read_through >= g.last_seq)
        order by g.last_seq desc
        limit @row_limit
    ) c
    union all
    (select g.last_seq
     from activity_groups g
     where g.audience_user_id = @reader_id
       and not coalesce((select r.is_admin from reader r), false)
       and g.last_seq > @read_through::bigint
       and (g.project_id is null or g.project_id in (select p.project_id from projects p))
       and not exists (select 1 from activity_group_reads gr
                       where gr.user_id = @reader_id and gr.group_id = g.id and gr.read_through >= g.last_seq)
     order by g.last_seq desc
     limit @row_limit)
    union all
    (select g.last_seq
     from activity_groups g
     where coalesce((select r.is_admin from reader r), false)
       and g.last_seq > @read_through::bigint
       -- not a project being deleted (FeedGroups): a hashed set of the few marked ones (`public.`:
       -- `projects` here is the reader's projects above)
       and (g.project_id is null
            or g.project_id not in (select pr.id from public.projects pr where pr.deleting_since is not null))
       and not exists (select 1 from activity_group_reads gr
                       where gr.user_id = @reader_id and gr.group_id = g.id and gr.read_through >= g.last_seq)
     order by g.last_seq desc
     limit @row_limit)
), newest as (
    select c.last_seq from candidates c order by c.last_seq desc limit @row_limit
)
select count(*)::bigint as unread,
       count(*) filter (where n.last_seq > @seen_through::bigint)::bigint as unseen
from newest n;

-- name: FeedChanges :many
-- The visible groups with activity after @after, oldest change first: what a stream sends next, and
-- what it replays after a reconnect (Last-Event-ID).
with reader as (
    select u.id, u.role = 'admin' as is_admin from users u where u.id = @reader_id
), projects as (
    select m.project_id
    from project_members m
    where m.user_id = @reader_id and not coalesce((select r.is_admin from reader r), false)
)
select c.id::bigint as id, c.last_seq::bigint as last_seq
from (
    select s.id, s.last_seq
    from projects p
    cross join lateral (
        select g.id, g.last_seq
        from activity_groups g
        where g.project_id = p.project_id and g.audience_user_id is null and g.last_seq > @after::bigint
        order by g.last_seq
        limit @row_limit
    ) s
    union all
    (
        select g.id, g.last_seq
        from activity_groups g
        where g.audience_user_id = @reader_id
          and not coalesce((select r.is_admin from reader r), false)
          and g.last_seq > @after::bigint
          and (g.project_id is null or g.project_id in (select p.project_id from projects p))
        order by g.last_seq
        limit @row_limit
    )
    union all
    (
        select g.id, g.last_seq
        from activity_groups g
        where coalesce((select r.is_admin from reader r), false) and g.last_seq > @after::bigint
          and (g.project_id is null or g.project_id not in (select pr.id from public.projects pr where pr.deleting_since is not null))
        order by g.last_seq
        limit @row_limit
    )
) c
order by c.last_seq
limit @row_limit;

-- name: ReaderScope :one
-- What a stream checks a change notice against: the reader's projects now, and the admin flag.
select coalesce((select u.role = 'admin' from users u where u.id = @reader_id), false)::boolean as is_admin,
       coalesce((select array_agg(m.project_id) from project_members m where m.user_id = @reader_id),
                '{}')::bigint[] as project_ids;

-- name: LatestActivitySeq :one
select coalesce(max(e.id), 0)::bigint as seq from activity_events e;

-- ----------------------------------------------------------------------------------- read state

-- name: MarkFeedSeen :one
-- The bell was opened: everything up to @through (at most the newest event) is seen.
insert into activity_reader_state as s (user_id, seen_through)
values (@reader_id, least(@through::bigint, (select coalesce(max(e.id), 0) from activity_events e)))
on conflict (user_id) do update set seen_through = greatest(s.seen_through, excluded.seen_through)
returning s.seen_through;

-- name: MarkFeedReadThrough :one
-- Every event up to @through (at most the newest event) is read.
insert into activity_reader_state as s (user_id, read_through)
values (@reader_id, least(@through::bigint, (select coalesce(max(e.id), 0) from activity_events e)))
on conflict (user_id) do update set read_through = greatest(s.read_through, excluded.read_through)
returning s.read_through;

-- name: MarkGroupRead :exec
-- The group is read up to @through (at most its last event): later events make it unread again.
insert into activity_group_reads as r (user_id, group_id, read_through)
select @reader_id, g.id, least(@through::bigint, g.last_seq)
from activity_groups g
where g.id = @group_id
on conflict (user_id, group_id) do update set read_through = greatest(r.read_through, excluded.read_through);

-- name: VisibleEvents :many
-- Of the given event ids, those the reader may see now, with their groups and projects. A project
-- being deleted is gone (FeedGroups).
select e.id, e.group_id, e.project_id
from activity_events e
where e.id = any(@event_ids::bigint[])
  and not exists (select 1 from projects p where p.id = e.project_id and p.deleting_since is not null)
  and activity_may_see(@reader_id, coalesce((select u.role = 'admin' from users u where u.id = @reader_id), false), e.project_id, e.audience_user_id);

-- name: InsertEventReads :exec
insert into activity_event_reads (user_id, event_id, group_id)
select @reader_id, t.event_id, t.group_id
from (select unnest(@event_ids::bigint[]) as event_id, unnest(@group_ids::bigint[]) as group_id) t
on conflict (user_id, event_id) do nothing;

-- name: GroupsWithEventReads :many
select distinct r.group_id from activity_event_reads r where r.user_id = @reader_id order by r.group_id;

-- name: CompactGroupReads :exec
-- Keeps the read marks compact (run after locking the groups with LockActivityGroups): a group none
-- of whose events above the reader's marks is left unread gets its mark moved to its last event.
-- This is what lets FeedGroups and UnreadCounts decide "unread" from the last event alone.
with reader as (
    select coalesce((select s.read_through from activity_reader_state s where s.user_id = @reader_id), 0)::bigint as rt
), done as (
    select g.id, g.last_seq
    from activity_groups g
    left join activity_group_reads gr on gr.user_id = @reader_id and gr.group_id = g.id
    where g.id = any(@group_ids::bigint[])
      and not exists (
          select 1 from activity_events e
          where e.group_id = g.id
            and e.id > greatest((select rt from reader), coalesce(gr.read_through, 0))
            and not exists (
                select 1 from activity_event_reads er where er.user_id = @reader_id and er.event_id = e.id
            )
      )
)
insert into activity_group_reads as r (user_id, group_id, read_through)
select @reader_id, done.id, done.last_seq from done
on conflict (user_id, group_id) do update set read_through = greatest(r.read_through, excluded.read_through);

-- name: DropCoveredEventReads :execrows
-- Single-event marks that the reader's or their group's mark already covers.
delete from activity_event_reads er
where er.user_id = @reader_id
  and (er.event_id <= coalesce((select s.read_through from activity_reader_state s where s.user_id = @reader_id), 0)
       or er.event_id <= coalesce((select gr.read_through from activity_group_reads gr
                                   where gr.user_id = @reader_id and gr.group_id = er.group_id), 0));

-- name: PurgeOldPrivateGroups :execrows
-- The retention of the groups no project holds (a reader's own: orders, a project's deletion), one
-- bounded chunk, oldest first: their events, actors, objects and read marks go with them (cascades). A
-- project's groups go with the project's purge. Served by activity_groups_private_last_idx (partial:
-- these groups only). SKIP LOCKED: a group a writer holds (a late event) waits for the next run.
delete from activity_groups doomed
where doomed.id = any(array(
    select g.id from activity_groups g
    where g.project_id is null and g.last_at < now() - make_interval(days => @retention_days::integer)
    order by g.last_at
    limit @chunk_size::integer
    for update skip locked
));

-- name: ForgetUserNames :exec
-- An account's erasure: the member's name as their object's title and in the events about them
-- (activity_events_user_object_idx). This release stores neither (names are read from the accounts);
-- the previous release's worker, running beside it during an upgrade, still did.
with objects as (
    update activity_objects o set title = null
    where o.object_type = 'user' and o.object_id = @user_id and o.title is not null
)
update activity_events e set data = e.data - array['name', 'title', 'filename']
where e.object_type = 'user' and e.object_id = @user_id and e.data ?| array['name', 'title', 'filename'];
