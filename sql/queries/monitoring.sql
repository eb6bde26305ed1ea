-- name: LockKey :exec
-- Serialises work on one key (a fingerprint, a budget channel) until the transaction ends.
select pg_advisory_xact_lock(hashtextextended(@key::text, 0));

-- name: FindHashes :many
select h.hash, h.group_id, h.variant, h.grouping_version, g.root_id
from monitoring_fingerprints h
join monitoring_groups g on g.id = h.group_id
where h.hash = any(@hashes::text[]);

-- name: CreateGroup :one
insert into monitoring_groups (id, root_id, kind, title, culprit, status_changed_at, first_seen_at, last_seen_at)
select n.id, n.id, @kind::monitoring_group_kind, @title::text, @culprit::text, @first_seen_at::timestamptz,
       @first_seen_at::timestamptz, @last_seen_at::timestamptz
from (select nextval(pg_get_serial_sequence('monitoring_groups', 'id')) as id) n
returning *;

-- name: AddHashes :exec
insert into monitoring_fingerprints (hash, group_id, variant, grouping_version)
select unnest(@hashes::text[]), @group_id::bigint, unnest(@variants::text[]), @grouping_version::text
on conflict (hash) do nothing;

-- name: GetGroup :one
select * from monitoring_groups where id = @id;

-- name: LockGroup :one
-- FOR NO KEY UPDATE, not FOR UPDATE: writers and changes still exclude each other, while a foreign
-- key's check (a hash, a release, a user of the group: FOR KEY SHARE) does not wait for it. A write
-- adds a missing hash to its group before it locks the group's root; with FOR UPDATE, a merge
-- locking that group (to refuse it, 409) and the write locking its root deadlocked.
select * from monitoring_groups where id = @id for no key update;

-- name: AddGroupEvents :one
-- last_release is the release of the group's latest event: a write of earlier events (an old release
-- still running in a rolling deploy, events held back by an outage) keeps the stored one. The set
-- list reads the row as it was.
update monitoring_groups
set events = events + @events,
    users = users + @new_users,
    first_seen_at = least(first_seen_at, @first_seen_at),
    last_seen_at = greatest(last_seen_at, @last_seen_at),
    last_release = case when @last_seen_at >= last_seen_at then @last_release else last_release end
where id = @id
returning *;

-- name: AddGroupUsers :one
-- How many users the group had not seen before. The root of a merged tree (@root_id, locked by the
-- write) counts, in tree_users, those no other member had seen either: the statement's snapshot
-- holds the other members' users as they were before it.
with added as (
    insert into monitoring_group_users (group_id, user_id, first_seen_at, last_seen_at)
    select @group_id::bigint, unnest(@user_ids::bigint[]), @seen_at::timestamptz, @seen_at::timestamptz
    on conflict (group_id, user_id) do nothing
    returning user_id
), tree as (
    update monitoring_groups r
    set tree_users = r.tree_users + (
        select count(*) from added a
        where not exists (
            select 1 from monitoring_group_users u
            join monitoring_groups m on m.id = u.group_id
            where m.root_id = r.id and m.id <> @group_id::bigint and u.user_id = a.user_id
        )
    )
    where r.id = @root_id::bigint
      and exists (select 1 from added)
      and exists (select 1 from monitoring_groups m where m.root_id = r.id and m.id <> r.id)
)
select count(*)::bigint as added from added;

-- name: TouchGroupUsers :exec
update monitoring_group_users
set last_seen_at = greatest(last_seen_at, @seen_at)
where group_id = @group_id and user_id = any(@user_ids::bigint[]);

-- name: AddGroupCounts :exec
insert into monitoring_group_counts (group_id, minute, events)
select @group_id::bigint, unnest(@minutes::timestamptz[]), unnest(@counts::bigint[])
on conflict (group_id, minute) do update set events = monitoring_group_counts.events + excluded.events;

-- name: UpsertRelease :one
-- A release that runs (a process of it started, or an event of it arrived). The first one gives the
-- release its id, which is its place in the release order ("older" = first ran before).
insert into monitoring_releases (name) values (@name)
on conflict (name) do update set name = excluded.name
returning *;

-- name: GetReleaseByName :one
select * from monitoring_releases where name = @name;

-- name: GetRelease :one
select * from monitoring_releases where id = @id;

-- name: AddGroupRelease :exec
insert into monitoring_group_releases (group_id, release_id, first_seen_at, last_seen_at, events)
values (@group_id, @release_id, @first_seen_at, @last_seen_at, @events)
on conflict (group_id, release_id) do update
set first_seen_at = least(monitoring_group_releases.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(monitoring_group_releases.last_seen_at, excluded.last_seen_at),
    events = monitoring_group_releases.events + excluded.events;

-- name: InsertEvent :exec
insert into monitoring_events (group_id, occurred_at, hash, release, environment, message, exception, context, grouping)
values (@group_id, @occurred_at, @hash, @release, @environment, @message, @exception, @context, @grouping);

-- name: TrimEvents :exec
-- Keeps the newest @keep events of the group.
delete from monitoring_events
where monitoring_events.group_id = @group_id::bigint
  and monitoring_events.id <= (select e.id from monitoring_events e where e.group_id = @group_id::bigint
                               order by e.id desc offset @keep::integer limit 1);

-- name: SetGroupState :one
update monitoring_groups
set status = @status,
    status_changed_at = @status_changed_at,
    resolved_at = sqlc.narg(resolved_at),
    resolved_in_release_id = sqlc.narg(resolved_in_release_id),
    resolved_after_release_id = sqlc.narg(resolved_after_release_id),
    ignore_mode = sqlc.narg(ignore_mode),
    ignore_until_events = sqlc.narg(ignore_until_events),
    ignore_until = sqlc.narg(ignore_until),
    ignore_ended_at = null
where id = @id
returning *;

-- name: AddActivity :exec
insert into monitoring_group_activity (group_id, action, actor_id, detail, at)
values (@group_id, @action, sqlc.narg(actor_id), @detail, @at);

-- name: TreeTotals :one
select coalesce(sum(events), 0)::bigint as events, min(first_seen_at)::timestamptz as first_seen_at,
       max(last_seen_at)::timestamptz as last_seen_at, count(*)::bigint as members
from monitoring_groups where root_id = @root_id;

-- name: TreeUsers :one
-- The users a tree affected: a merged tree's as its root keeps them, a tree of one group's its own.
select case when exists (select 1 from monitoring_groups m where m.root_id = r.id and m.id <> r.id)
            then r.tree_users else r.users end::bigint as users
from monitoring_groups r
where r.id = @root_id;

-- name: MergedRootsAfter :many
-- The next @row_limit roots of merged trees after @after_id (the hourly recount of tree_users, which
-- heals what a write of the previous release, beside this one during an upgrade, left uncounted).
select r.id from monitoring_groups r
where r.parent_id is null and r.id > @after_id
  and exists (select 1 from monitoring_groups m where m.root_id = r.id and m.id <> r.id)
order by r.id
limit @row_limit;

-- name: RecountTreeUsers :exec
-- tree_users of those of @root_ids that are roots of merged trees, counted again from their members'
-- users (after a merge, an unmerge, the users' retention): once per change, not per read.
update monitoring_groups r
set tree_users = (
    select count(distinct u.user_id)
    from monitoring_group_users u
    join monitoring_groups m on m.id = u.group_id
    where m.root_id = r.id
)
where r.id = any(@root_ids::bigint[])
  and r.parent_id is null
  and exists (select 1 from monitoring_groups m where m.root_id = r.id and m.id <> r.id);

-- name: TreeEventsBetween :one
select coalesce(sum(c.events), 0)::bigint as events
from monitoring_group_counts c
join monitoring_groups g on g.id = c.group_id
where g.root_id = @root_id and c.minute >= @since and c.minute < @until;

-- name: TreeUsersSince :one
-- The users of a merged tree seen since @since, at most @at_most (the users rule's threshold: every
-- write of a group asks, and an incident that reaches many users is when writes come fast). A user
-- seen by two members counts once, so this one still reads every row of the window; merged trees are
-- few, and a tree of one group is GroupUsersSince, which stops at the bound.
select count(*)::bigint as users from (
    select distinct u.user_id
    from monitoring_group_users u
    join monitoring_groups g on g.id = u.group_id
    where g.root_id = @root_id and u.last_seen_at >= @since
    limit @at_most::bigint
) seen;

-- name: GroupUsersSince :one
-- The users of one group seen since @since, at most @at_most: its rows are distinct users, so the
-- scan of monitoring_group_users_seen_idx stops at the bound (it read every user of the window).
select count(*)::bigint as users from (
    select 1 from monitoring_group_users u
    where u.group_id = @group_id and u.last_seen_at >= @since
    limit @at_most::bigint
) seen;

-- name: ResolvedBySystem :one
-- Whether the group's latest resolution was one the system made itself (@system_actions: a cron
-- monitor's recovery, its job no longer scheduled), not a person's ('resolved'). No row: none on
-- record (never resolved, or its activity purged).
select a.action = any(@system_actions::text[]) as by_system
from monitoring_group_activity a
where a.group_id = @group_id and (a.action = 'resolved' or a.action = any(@system_actions::text[]))
order by a.id desc
limit 1;

-- name: FireRule :one
-- Records that the rule fires for the group unless it last fired after @cutoff (now minus the
-- action interval); returns no row then, so concurrent writers fire it once.
insert into monitoring_rule_fires as f (rule, group_id, last_fired_at)
values (@rule, @group_id, @now)
on conflict (rule, group_id) do update set last_fired_at = excluded.last_fired_at
where f.last_fired_at <= @cutoff::timestamptz
returning f.last_fired_at;

-- name: GroupAlertedAfter :one
-- Whether the group had an alert after @cutoff (any rule): its last-alerted time is kept as the
-- firing of the pseudo-rule @gap_rule, which no configured rule can be named.
select exists (
    select 1 from monitoring_rule_fires
    where rule = @gap_rule and group_id = @group_id and last_fired_at > @cutoff
) as alerted;

-- name: MarkGroupAlerted :exec
insert into monitoring_rule_fires (rule, group_id, last_fired_at)
values (@gap_rule, @group_id, @now)
on conflict (rule, group_id) do update set last_fired_at = greatest(monitoring_rule_fires.last_fired_at, excluded.last_fired_at);

-- name: ListGroups :many
-- Every root, newest first (monitoring_groups_roots_idx). A status or a kind is
-- ListGroupsWithStatusAndKind: optional ones here (`narg is null or status = narg`) had no index and,
-- under either plan, a page of a rare status read every root (20,030 rows for 30 ignored of 20,000).
select g.id, g.kind, g.title, g.culprit, g.status, g.status_changed_at, g.last_release, g.resolved_at,
       g.ignore_mode, g.ignore_until_events, g.ignore_until, t.events, t.first_seen_at, t.last_seen_at,
       t.members,
       case when t.members = 1 then g.users else g.tree_users end::bigint as users
from monitoring_groups g
cross join lateral (
    select coalesce(sum(m.events), 0)::bigint as events, min(m.first_seen_at)::timestamptz as first_seen_at,
           max(m.last_seen_at)::timestamptz as last_seen_at, count(*)::bigint as members
    from monitoring_groups m where m.root_id = g.id
) t
where g.parent_id is null
  and g.id < @before_id
  and (sqlc.narg(release)::text is null or exists (
        select 1 from monitoring_group_releases r
        join monitoring_groups m on m.id = r.group_id
        join monitoring_releases rel on rel.id = r.release_id
        where m.root_id = g.id and rel.name = sqlc.narg(release)::text))
order by g.id desc
limit @row_limit;

-- name: ListGroupsWithStatusAndKind :many
-- The roots of any of @statuses and of any of @kinds (the service passes every value of the one not
-- filtered), newest first: the newest @row_limit ids of each (status, kind) from its range of
-- monitoring_groups_listed_idx, the page of those, then the page's rows by their key. At most
-- (statuses x kinds) pages of ids are read, whatever the plan (the release remains a filter).
select g.id, g.kind, g.title, g.culprit, g.status, g.status_changed_at, g.last_release, g.resolved_at,
       g.ignore_mode, g.ignore_until_events, g.ignore_until, t.events, t.first_seen_at, t.last_seen_at,
       t.members,
       case when t.members = 1 then g.users else g.tree_users end::bigint as users
from monitoring_groups g
cross join lateral (
    select coalesce(sum(m.events), 0)::bigint as events, min(m.first_seen_at)::timestamptz as first_seen_at,
           max(m.last_seen_at)::timestamptz as last_seen_at, count(*)::bigint as members
    from monitoring_groups m where m.root_id = g.id
) t
where g.id = any(array(
    select c.id
    from unnest(@statuses::monitoring_group_status[]) s(status)
    cross join unnest(@kinds::monitoring_group_kind[]) k(kind)
    cross join lateral (
        select r.id from monitoring_groups r
        where r.parent_id is null and r.status = s.status and r.kind = k.kind and r.id < @before_id
          and (sqlc.narg(release)::text is null or exists (
                select 1 from monitoring_group_releases gr
                join monitoring_groups m on m.id = gr.group_id
                join monitoring_releases rel on rel.id = gr.release_id
                where m.root_id = r.id and rel.name = sqlc.narg(release)::text))
        order by r.id desc
        limit @row_limit
    ) c
    order by c.id desc
    limit @row_limit))
order by g.id desc;

-- name: TreeMembers :many
select * from monitoring_groups where root_id = @root_id order by id;

-- name: TreeHashes :many
select h.hash, h.group_id, h.variant, h.grouping_version, h.created_at
from monitoring_fingerprints h
join monitoring_groups g on g.id = h.group_id
where g.root_id = @root_id
order by h.group_id, h.created_at, h.hash;

-- name: ReleasesOfGroup :many
-- The releases a group's events came in, one row per release: a root's are its whole tree's (what
-- its detail counts), a merged group's only its own (as its counters are). The @row_limit releases
-- seen most recently, in the order they were first seen (the retention purges the releases not seen
-- for MONITORING_RETENTION_DAYS: PurgeGroupReleasesBefore).
select * from (
    select r.name, min(gr.first_seen_at)::timestamptz as first_seen_at,
           max(gr.last_seen_at)::timestamptz as last_seen_at, sum(gr.events)::bigint as events,
           r.id as release_id
    from monitoring_group_releases gr
    join monitoring_releases r on r.id = gr.release_id
    where gr.group_id in (select m.id from monitoring_groups m where m.id = @group_id or m.root_id = @group_id)
    group by r.id, r.name
    order by max(gr.last_seen_at) desc, r.id desc
    limit @row_limit::integer
) newest
order by newest.first_seen_at, newest.release_id;

-- name: ListGroupEvents :many
select * from monitoring_events
where group_id = any(@group_ids::bigint[]) and id < @before_id
order by id desc
limit @row_limit;

-- name: LatestTreeEvent :one
select e.* from monitoring_events e
join monitoring_groups g on g.id = e.group_id
where g.root_id = @root_id
order by e.id desc
limit 1;

-- name: SetParent :exec
update monitoring_groups set parent_id = sqlc.narg(parent_id) where id = @id;

-- name: MoveTree :exec
update monitoring_groups set root_id = @new_root_id where root_id = @old_root_id;

-- name: ShiftIgnoreCount :exec
-- A merge or an unmerge moves events into or out of a tree ignored until a count (its target is a
-- number of its events): the target moves with them, so as many events as before are still to come.
update monitoring_groups
set ignore_until_events = ignore_until_events + @events::bigint
where id = @id and status = 'ignored' and ignore_mode = 'until_count' and ignore_until_events is not null;

-- name: DetachSubtree :exec
-- Makes @id the root of itself and of every group merged (directly or not) into it.
with recursive subtree as (
    select g.id from monitoring_groups g where g.id = @id
    union all
    select c.id from monitoring_groups c join subtree s on c.parent_id = s.id
)
update monitoring_groups set root_id = @id where id in (select id from subtree);

-- name: TimedIgnoresDue :many
-- The roots whose ignore time has passed, for ExpireTimedIgnore (nothing locked here).
select id from monitoring_groups
where status = 'ignored' and ignore_mode = 'until_time' and ignore_until <= @now and parent_id is null
order by id;

-- name: ExpireTimedIgnore :exec
-- The group is unresolved again if its ignore time has passed and it is still a root; ignore_ended_at
-- keeps the end of the ignore so that its next event still reopens it (transition and alert). One
-- group per transaction: one statement updating several roots locked them in its plan's order (by
-- ignore_until), against the id order the purge and merges lock roots in, and deadlocked with them.
update monitoring_groups
set status = 'unresolved', status_changed_at = @now, ignore_mode = null, ignore_until = null,
    ignore_until_events = null, ignore_ended_at = ignore_until
where id = @id
  and status = 'ignored' and ignore_mode = 'until_time' and ignore_until <= @now and parent_id is null;


-- name: CurrentBudgetPeriod :one
-- The channel's period that still takes alerts at @now: not over, and its digest (if any) not rendered
-- yet. The sender renders a digest under the budget lock and its list is final from then on, so a
-- writer whose clock lags the sender's never folds an alert into a digest already sent.
select p.* from monitoring_budget_periods p
where p.channel = @channel and p.ends_at > @now
  and not exists (select 1 from monitoring_alerts d where d.id = p.digest_id and d.text_html <> '')
order by p.started_at desc
limit 1;

-- name: OpenBudgetPeriod :one
-- A period from @now, or from the end of the latest one when that is later (its digest was rendered
-- before @now's writer got the lock): periods never overlap, so none starts inside a closed one.
insert into monitoring_budget_periods (channel, started_at, ends_at, used)
select @channel::text, s.started_at, s.started_at + make_interval(secs => @window_s::float8), 0
from (select greatest(@now::timestamptz, max(ends_at)) as started_at
      from monitoring_budget_periods where channel = @channel::text) s
returning *;

-- name: UseBudget :one
update monitoring_budget_periods set used = used + 1
where channel = @channel and started_at = @started_at
returning *;

-- name: SetBudgetDigest :exec
update monitoring_budget_periods set digest_id = @digest_id where channel = @channel and started_at = @started_at;

-- name: InsertAlert :one
insert into monitoring_alerts (key, kind, rule, group_id, summary, text_html, text_plain, digest_id, created_at)
values (@key, @kind, @rule, sqlc.narg(group_id), @summary, @text_html, @text_plain, sqlc.narg(digest_id), @created_at)
on conflict (key) do nothing
returning *;

-- name: GetAlert :one
select * from monitoring_alerts where id = @id;

-- name: SetAlertText :exec
update monitoring_alerts set text_html = @text_html, text_plain = @text_plain where id = @id;

-- name: DigestSummaries :many
-- The first @row_limit alerts of a digest (a message holds ~4,096 characters: far fewer lines than a
-- burst can hold alerts), each row with the digest's total.
select a.id, a.summary, a.group_id, a.created_at,
       (select count(*) from monitoring_alerts c where c.digest_id = @digest_id)::bigint as total
from monitoring_alerts a
where a.digest_id = @digest_id
order by a.id
limit @row_limit;

-- name: InsertDeliveries :exec
insert into monitoring_deliveries (alert_id, chat_id, not_before)
select @alert_id::bigint, unnest(@chat_ids::text[]), @not_before::timestamptz
on conflict (alert_id, chat_id) do nothing;

-- name: ListAlerts :many
-- Every alert, newest first (the primary key). A group's are ListGroupAlerts: one statement per shape,
-- since the generic plan of an optional group filter walked every alert with the group as a filter.
select a.id, a.kind, a.rule, a.group_id, a.summary, a.digest_id, a.created_at,
       coalesce((select array_agg(d.status::text || ':' || d.chat_id order by d.id)
                 from monitoring_deliveries d where d.alert_id = a.id), '{}')::text[] as deliveries
from monitoring_alerts a
where a.id < @before_id
order by a.id desc
limit @row_limit;

-- name: ListGroupAlerts :many
-- A group's own alerts and, for a root, its tree's (a merged group is no root: only its own), newest
-- first: each member's newest @row_limit ids from its range of monitoring_alerts_group_idx (read from
-- the index alone once autovacuum has seen the table: it stops at the page), the page of those, then
-- the page's rows by their key, a list no estimate can turn into a scan. Was an optional group in
-- ListAlerts: every alert read newest first with the group as a filter (4,204 for a group's 4).
select a.id, a.kind, a.rule, a.group_id, a.summary, a.digest_id, a.created_at,
       coalesce((select array_agg(d.status::text || ':' || d.chat_id order by d.id)
                 from monitoring_deliveries d where d.alert_id = a.id), '{}')::text[] as deliveries
from monitoring_alerts a
where a.id = any(array(
    select newest.id
    from monitoring_groups m
    cross join lateral (
        select l.id from monitoring_alerts l
        where l.group_id = m.id and l.id < @before_id
        order by l.id desc
        limit @row_limit
    ) newest
    where m.id = @group_id or m.root_id = @group_id
    order by newest.id desc
    limit @row_limit))
order by a.id desc;

-- name: TryAdvisoryLock :one
select pg_try_advisory_lock(@key::bigint) as locked;

-- name: AdvisoryUnlock :one
select pg_advisory_unlock(@key::bigint) as unlocked;

-- name: MarkOrphansUncertain :many
-- Run only by the sender holding the sender lock: a row still 'sending' belongs to a dead sender,
-- whose request may have reached Telegram. It is never sent again; its chat counts it in its pacing.
update monitoring_deliveries
set status = 'uncertain', last_error = 'the sender stopped during the request; not resent (at most once)'
where status = 'sending'
returning chat_id;

-- name: PendingDeliveries :many
-- The first @per_chat deliveries due by @horizon of every chat: a chat that may not receive anything
-- for a while (a long 429 retry_after) and has many deliveries waiting never hides another chat's.
select r.id, r.alert_id, r.chat_id, r.not_before, r.attempts
from (
    select d.id, d.alert_id, d.chat_id, d.not_before, d.attempts,
           row_number() over (partition by d.chat_id order by d.not_before, d.id) as place
    from monitoring_deliveries d
    where d.status = 'pending' and d.not_before <= @horizon
) r
where r.place <= @per_chat::integer
order by r.not_before, r.id;

-- name: CountDueDeliveries :one
select count(*)::bigint as due from monitoring_deliveries where status = 'pending' and not_before <= @before;

-- name: NewestDueDelivery :one
select max(id)::bigint as newest from monitoring_deliveries where status = 'pending' and not_before <= @before;

-- name: ClaimDelivery :one
update monitoring_deliveries
set status = 'sending', claimed_at = @now, attempts = attempts + 1
where id = @id and status = 'pending'
returning *;

-- name: MarkDeliverySent :exec
update monitoring_deliveries
set status = 'sent', sent_at = @sent_at, message_id = sqlc.narg(message_id), last_error = sqlc.narg(last_error)
where id = @id;

-- name: MarkDeliveryPending :exec
update monitoring_deliveries set status = 'pending', not_before = @not_before, last_error = @last_error
where id = @id;

-- name: ReleaseDelivery :exec
-- A delivery this sender claimed and stopped before Telegram received it (the sender stopping): back
-- to pending with the attempt its claim counted given back, so a stop never spends an attempt.
update monitoring_deliveries
set status = 'pending', not_before = @not_before, last_error = @last_error,
    attempts = greatest(attempts - 1, 0)
where id = @id and status = 'sending';

-- name: MarkDeliveryFinal :exec
update monitoring_deliveries set status = @status, last_error = @last_error where id = @id;

-- name: LostDeliveries :one
-- The deliveries of the configured chat @chat_id lost since its last notice: ended 'uncertain' or
-- 'failed' with an id above the chat's told_through (none told yet: 0). Counted (with the span of
-- their alerts' times) without the notices' own, which are never told again, but through_id (the
-- highest id read, 0 for none) covers those too, so told_through moves past them. Only deliveries
-- below the chat's first one still pending or being sent are read: a delivery still being tried
-- (backing off, or a digest waiting for its period's end) may be lost later, and told_through never
-- passes it. Run by the one sender, in the transaction that records a delivered message.
with told as (
    select coalesce(max(c.told_through), 0)::bigint as through
    from monitoring_telegram_chats c where c.chat_id = @chat_id::text
), unsettled as materialized (
    -- materialized: read from the partial indexes of those statuses (a few rows), never min(id) by a
    -- walk of the primary key, which reads the whole table when the chat has none
    select u.id from monitoring_deliveries u where u.status = 'pending' and u.chat_id = @chat_id::text
    union all
    select u.id from monitoring_deliveries u where u.status = 'sending' and u.chat_id = @chat_id::text
)
select count(*) filter (where a.kind <> 'notice')::bigint as lost,
       min(a.created_at) filter (where a.kind <> 'notice')::timestamptz as first_created_at,
       max(a.created_at) filter (where a.kind <> 'notice')::timestamptz as last_created_at,
       coalesce(max(d.id), 0)::bigint as through_id
from monitoring_deliveries d
join monitoring_alerts a on a.id = d.alert_id
where d.chat_id = @chat_id::text and d.status in ('uncertain', 'failed')
  and d.id > (select t.through from told t)
  and d.id < coalesce((select min(s.id) from unsettled s), 9223372036854775807);

-- name: SetToldThrough :exec
-- The losses of the configured chat @chat_id up to delivery @told_through are told (never moves back).
insert into monitoring_telegram_chats (chat_id, told_through)
values (@chat_id, @told_through)
on conflict (chat_id) do update
set told_through = greatest(monitoring_telegram_chats.told_through, excluded.told_through);

-- name: LoadChats :many
select * from monitoring_telegram_chats;

-- name: SaveChatMigration :exec
-- Telegram moved the configured chat @chat_id (a group upgraded to a supergroup) to @migrated_to:
-- deliveries to @chat_id go there from now on.
insert into monitoring_telegram_chats (chat_id, migrated_to)
values (@chat_id, @migrated_to)
on conflict (chat_id) do update set migrated_to = excluded.migrated_to;

-- name: BlockChatUntil :exec
-- The outage notice, sent without the database, was told by a 429 to leave @chat_id alone until
-- @blocked_until: the sender's pacing honours it too (the later of the two windows wins).
insert into monitoring_telegram_chats (chat_id, blocked_until)
values (@chat_id, @blocked_until)
on conflict (chat_id) do update
set blocked_until = greatest(monitoring_telegram_chats.blocked_until, excluded.blocked_until);

-- name: SaveChat :exec
insert into monitoring_telegram_chats (chat_id, blocked_until, recent_sends)
values (@chat_id, sqlc.narg(blocked_until), @recent_sends)
on conflict (chat_id) do update set blocked_until = excluded.blocked_until, recent_sends = excluded.recent_sends;


-- name: AddRouteLatency :exec
insert into monitoring_route_latency (route, method, minute, bucket, requests)
select unnest(@routes::text[]), unnest(@methods::text[]), unnest(@minutes::timestamptz[]),
       unnest(@buckets::smallint[]), unnest(@requests::bigint[])
on conflict (route, method, minute, bucket)
do update set requests = monitoring_route_latency.requests + excluded.requests;

-- name: AddRouteExemplars :exec
insert into monitoring_route_exemplars (route, method, minute, request_id, duration_ms, status)
select unnest(@routes::text[]), unnest(@methods::text[]), unnest(@minutes::timestamptz[]),
       unnest(@request_ids::text[]), unnest(@durations_ms::float8[]), unnest(@statuses::integer[]);

-- name: RouteLatencyBetween :many
select route, method, bucket, sum(requests)::bigint as requests, min(minute)::timestamptz as first_minute
from monitoring_route_latency
where minute >= @since and minute < @until
group by route, method, bucket;

-- name: RouteExemplarsBetween :many
-- The slowest requests of each (route, method) given, at most @row_limit each: one round trip,
-- each route read through monitoring_route_exemplars_route_idx as alone.
select wanted.route::text as route, wanted.method::text as method, slowest.request_id, slowest.duration_ms, slowest.status, slowest.minute
from (select unnest(@routes::text[]) as route, unnest(@methods::text[]) as method) wanted
cross join lateral (
    select e.request_id, e.duration_ms, e.status, e.minute
    from monitoring_route_exemplars e
    where e.route = wanted.route and e.method = wanted.method and e.minute >= @since and e.minute < @until
    order by e.duration_ms desc
    limit @row_limit
) slowest
order by wanted.route, wanted.method, slowest.duration_ms desc;

-- name: AddJobRuns :exec
insert into monitoring_job_runs (job, minute, outcome, runs, total_ms, max_ms, max_attempts)
select unnest(@jobs::text[]), unnest(@minutes::timestamptz[]), unnest(@outcomes::text[]),
       unnest(@runs::bigint[]), unnest(@total_ms::float8[]), unnest(@max_ms::float8[]),
       unnest(@max_attempts::integer[])
on conflict (job, minute, outcome) do update
set runs = monitoring_job_runs.runs + excluded.runs,
    total_ms = monitoring_job_runs.total_ms + excluded.total_ms,
    max_ms = greatest(monitoring_job_runs.max_ms, excluded.max_ms),
    max_attempts = greatest(monitoring_job_runs.max_attempts, excluded.max_attempts);

-- name: JobRunsBetween :many
select job, outcome, sum(runs)::bigint as runs, sum(total_ms)::float8 as total_ms, max(max_ms)::float8 as max_ms,
       max(max_attempts)::integer as max_attempts, max(minute)::timestamptz as last_minute
from monitoring_job_runs
where minute >= @since and minute < @until
group by job, outcome
order by job, outcome;


-- name: UpsertCronMonitor :exec
insert into monitoring_cron_monitors (name, queue, schedule, margin_s, max_runtime_s, failure_threshold,
                                      recovery_threshold, registered_at)
values (@name, @queue, @schedule, @margin_s, @max_runtime_s, @failure_threshold, @recovery_threshold, @registered_at)
on conflict (name) do update
set queue = excluded.queue, schedule = excluded.schedule, margin_s = excluded.margin_s,
    max_runtime_s = excluded.max_runtime_s, failure_threshold = excluded.failure_threshold,
    recovery_threshold = excluded.recovery_threshold,
    registered_at = case when monitoring_cron_monitors.schedule = excluded.schedule
                         then monitoring_cron_monitors.registered_at else excluded.registered_at end;

-- name: DeleteCronMonitorsExcept :many
-- The monitors of jobs no longer scheduled (removed or renamed), with the problem group each leaves.
delete from monitoring_cron_monitors where name <> all(@names::text[])
returning name, group_id;

-- name: ListCronMonitors :many
select * from monitoring_cron_monitors order by name;

-- name: CronMonitorNames :many
select name from monitoring_cron_monitors order by name;

-- name: LockCronMonitor :one
select * from monitoring_cron_monitors where name = @name for update;

-- name: SaveCronMonitorState :exec
update monitoring_cron_monitors
set last_slot = sqlc.narg(last_slot),
    last_status = @last_status,
    last_started_at = sqlc.narg(last_started_at),
    last_finished_at = sqlc.narg(last_finished_at),
    last_duration_ms = sqlc.narg(last_duration_ms),
    missed_slot = sqlc.narg(missed_slot),
    consecutive_failures = @consecutive_failures,
    consecutive_ok = @consecutive_ok,
    group_id = sqlc.narg(group_id)
where name = @name;

-- name: InsertCheckin :exec
insert into monitoring_cron_checkins (name, slot, status, at, duration_ms)
values (@name, sqlc.narg(slot), @status, @at, sqlc.narg(duration_ms));


-- name: ClaimTick :one
-- The first process to move a periodic check to a new slot (of @interval_s seconds) runs it; the
-- others get no row. The slot is read from PostgreSQL's clock, the one clock every process shares: a
-- process whose own clock is off (stepped ahead, then corrected) neither runs the check early nor
-- silences everyone else's until its slot comes. A stored slot more than one ahead of the current
-- one (written under another interval, by an older release from a process's clock, or before
-- PostgreSQL's clock was set back) is taken over rather than waited for.
insert into monitoring_ticks (name, slot)
values (@name, floor(extract(epoch from now()) / @interval_s::float8)::bigint)
on conflict (name) do update set slot = excluded.slot
where monitoring_ticks.slot < excluded.slot or monitoring_ticks.slot > excluded.slot + 1
returning slot;

-- name: LockReports :exec
-- Taken before a report is chosen and recorded: two processes (or one on a clock behind) never both
-- read the same last report and record two reports of one period.
select pg_advisory_xact_lock(hashtextextended('monitoring_reports', 0));

-- name: LastReport :one
-- The latest report recorded: its day and the end of its period (null: recorded before periods were).
select day, until from monitoring_reports order by day desc limit 1;

-- name: ClaimReport :one
-- Under LockReports a day is claimed once; the conflict is still answered quietly for a process of
-- the release before, which claims without the lock during a rolling deploy.
insert into monitoring_reports (day, since, until) values (@day, @since, @until)
on conflict (day) do nothing
returning day;

-- name: SetReportAlert :exec
update monitoring_reports set alert_id = @alert_id where day = @day;

-- name: NewGroupsBetween :many
select id, kind, title, events from monitoring_groups
where parent_id is null and first_seen_at >= @since and first_seen_at < @until
order by events desc, id
limit @row_limit;

-- name: CountNewGroupsBetween :one
select count(*)::bigint as groups from monitoring_groups
where parent_id is null and first_seen_at >= @since and first_seen_at < @until;

-- name: RegressedBetween :many
select distinct g.id, g.kind, g.title
from monitoring_group_activity a
join monitoring_groups g on g.id = a.group_id
where a.action = 'regressed' and a.at >= @since and a.at < @until
order by g.id
limit @row_limit;

-- name: CountRegressedBetween :one
select count(distinct a.group_id)::bigint as groups
from monitoring_group_activity a
where a.action = 'regressed' and a.at >= @since and a.at < @until;

-- name: TopGroupsBetween :many
select g.root_id as id, r.kind, r.title, sum(c.events)::bigint as events
from monitoring_group_counts c
join monitoring_groups g on g.id = c.group_id
join monitoring_groups r on r.id = g.root_id
where c.minute >= @since and c.minute < @until
group by g.root_id, r.kind, r.title
order by sum(c.events) desc, g.root_id
limit @row_limit;

-- name: CronProblemsBetween :many
select name, status, count(*)::bigint as times
from monitoring_cron_checkins
where status in ('missed', 'error', 'timeout') and at >= @since and at < @until
group by name, status
order by name, status;

-- name: PurgeEventsBefore :execrows
-- The retention's queries (MonitoringService.purge) each delete one chunk of at most @chunk_size rows,
-- picked oldest first by an index, locked (the lock re-reads a row a writer changed meanwhile: a rule
-- fired again, a user seen again, no longer matches and is kept) and deleted by ctid (CONVENTIONS.md,
-- "A chunked delete"); the purge repeats a chunk, one transaction each, until one comes back short. Events
-- are picked by monitoring_events_occurred_idx: the chunk that finds none (the last of every run) reads
-- no event (by the primary key, it read the whole table).
delete from monitoring_events doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_events c
    where c.occurred_at < @before::timestamptz
    order by c.occurred_at
    limit @chunk_size::integer
    for update
));

-- name: PurgeGroupReleasesBefore :execrows
-- The releases a group has not seen since @before (monitoring_group_releases_last_seen_idx): a
-- long-lived group gains one row per release. A row seen again while the chunk waited for its lock
-- (UpsertGroupRelease) no longer matches and is kept.
delete from monitoring_group_releases doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_group_releases c
    where c.last_seen_at < @before::timestamptz
    order by c.last_seen_at
    limit @chunk_size::integer
    for update
));

-- name: PurgeCountsBefore :execrows
delete from monitoring_group_counts doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_group_counts c
    where c.minute < @before::timestamptz
    order by c.minute
    limit @chunk_size::integer
    for update
));

-- name: PurgeLatencyBefore :execrows
delete from monitoring_route_latency doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_route_latency c
    where c.minute < @before::timestamptz
    order by c.minute
    limit @chunk_size::integer
    for update
));

-- name: PurgeExemplarsBefore :execrows
-- No index on minute alone: ids follow the arrival order, as for events.
delete from monitoring_route_exemplars doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_route_exemplars c
    where c.minute < @before::timestamptz
    order by c.id
    limit @chunk_size::integer
    for update
));

-- name: PurgeJobRunsBefore :execrows
delete from monitoring_job_runs doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_job_runs c
    where c.minute < @before::timestamptz
    order by c.minute
    limit @chunk_size::integer
    for update
));

-- name: PurgeCheckinsBefore :execrows
delete from monitoring_cron_checkins doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_cron_checkins c
    where c.at < @before::timestamptz
    order by c.at
    limit @chunk_size::integer
    for update
));

-- name: PurgeAlertsBefore :execrows
-- An alert with a delivery still pending or being sent is kept (its deliveries go with it otherwise).
delete from monitoring_alerts doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_alerts c
    where c.created_at < @before::timestamptz
      and not exists (select 1 from monitoring_deliveries d
                      where d.alert_id = c.id and d.status in ('pending', 'sending'))
    order by c.created_at
    limit @chunk_size::integer
    for update of c
));

-- name: PurgeActivityBefore :execrows
delete from monitoring_group_activity doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_group_activity c
    where c.at < @before::timestamptz
    order by c.at
    limit @chunk_size::integer
    for update
));

-- name: PurgeBudgetPeriodsBefore :execrows
-- Over periods only: the next period starts at the latest one's end or now, whichever is later.
delete from monitoring_budget_periods doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_budget_periods c
    where c.ends_at < @before::timestamptz
    order by c.ends_at
    limit @chunk_size::integer
    for update
));

-- name: GroupsWithUsersBefore :many
-- The groups of the next chunk of PurgeGroupUsersBefore, from @from_group_id (the last group of the
-- chunk before, which may have more): a chunk never reads again the index entries the ones before it
-- went through (monitoring_group_users_seen_idx). With their roots, which the purge locks first.
select g.id, g.root_id from monitoring_groups g
where g.id in (
    select c.group_id from monitoring_group_users c
    where c.group_id >= @from_group_id::bigint and c.last_seen_at < @before::timestamptz
    order by c.group_id, c.last_seen_at
    limit @chunk_size::integer
)
order by g.id;

-- name: PurgeGroupUsersBefore :many
-- The users of @group_ids not seen since @before, of the groups under one of @root_ids now (locked
-- by groups.lock_roots; a group a merge moved under a root not locked waits for a later chunk or run), and each group's users
-- count lowered by its rows deleted, so the count stays the rows' (the list reads it; the detail
-- counts the rows). Returns the groups of the rows deleted.
with doomed as (
    delete from monitoring_group_users doomed
    where doomed.ctid = any(array(
        select c.ctid from monitoring_group_users c
        join monitoring_groups g on g.id = c.group_id
        where g.id = any(@group_ids::bigint[]) and g.root_id = any(@root_ids::bigint[])
          and c.last_seen_at < @before::timestamptz
        order by c.group_id, c.last_seen_at
        limit @chunk_size::integer
        for update of c
    ))
    returning doomed.group_id
), counted as (
    update monitoring_groups g
    set users = greatest(g.users - d.deleted, 0)
    from (select group_id, count(*) as deleted from doomed group by group_id) d
    where g.id = d.group_id
)
select group_id from doomed;

-- name: PurgeRuleFiresBefore :execrows
-- Called with a time at least the longest action interval ago: a firing that old silences nothing.
delete from monitoring_rule_fires doomed
where doomed.ctid = any(array(
    select c.ctid from monitoring_rule_fires c
    where c.last_fired_at < @before::timestamptz
    order by c.last_fired_at
    limit @chunk_size::integer
    for update
));
