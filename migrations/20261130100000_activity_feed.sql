-- migrate:up
-- The read side of the activity feed (app/domains/activity): groups decided at write time, object
-- titles kept as tombstones, and each reader's read state.
--
-- activity_events.id is the feed's sequence: the feed writer stores events under one advisory lock
-- (sql/queries/activity.sql LockActivityWriter), so ids are assigned in commit order and "every
-- event after id N" never misses one that committed late (keyset cursors, stream replay).

-- Events stored before groups existed go back through the outbox, so that the one grouping function
-- (app/domains/activity/grouping.py) groups them like every later event.
insert into outbox (queue, task, payload)
select 'feed', 'record_activity',
       jsonb_build_object(
           'actor_id', actor_id, 'verb', verb, 'object_type', object_type, 'object_id', object_id,
           'project_id', project_id, 'data', data, 'occurred_at', occurred_at)
from activity_events
order by id;
delete from activity_events;

-- A group: consecutive events of one stream (same verb, object type, project, audience, and the same
-- actor, or the same target for verbs grouped by target) within the window and the span it was built
-- with. `key` is its public name; `rule_version`, `window_s` and `max_span_s` are the rule that built
-- it, so a later rule never regroups it. The counters are exact totals over all its events.
create table activity_groups (
    id bigint generated always as identity primary key,
    key text not null unique check (length(key) between 1 and 64),
    rule_version smallint not null check (rule_version >= 1),
    window_s integer not null check (window_s >= 1),
    max_span_s integer not null check (max_span_s >= 1),
    stream text not null,
    verb text not null check (length(verb) between 1 and 100),
    object_type text not null,
    project_id bigint references projects (id) on delete cascade,
    audience_user_id bigint references users (id) on delete cascade,
    target_type text,
    target_id bigint,
    first_at timestamptz not null,
    last_at timestamptz not null,
    first_seq bigint not null,
    last_seq bigint not null,
    event_count integer not null check (event_count >= 0),
    actor_count integer not null check (actor_count >= 0),
    object_count integer not null check (object_count >= 0),
    check ((target_type is null) = (target_id is null))
);

-- The latest group of a stream (the one a new event may join).
create index activity_groups_stream_idx on activity_groups (stream, id desc);
-- A member's feed: per project, newest activity first, readable from the index alone.
create index activity_groups_project_idx on activity_groups (project_id, last_seq desc)
    include (id, audience_user_id, verb, object_type);
-- Private groups (an order's buyer).
create index activity_groups_audience_idx on activity_groups (audience_user_id, last_seq desc)
    include (id, project_id, verb, object_type) where audience_user_id is not null;
-- An administrator's feed: everything.
create index activity_groups_recent_idx on activity_groups (last_seq desc)
    include (id, project_id, audience_user_id, verb, object_type);

alter table activity_events
    add column group_id bigint not null references activity_groups (id) on delete cascade,
    add column audience_user_id bigint references users (id) on delete cascade,
    add column target_type text,
    add column target_id bigint,
    add constraint activity_events_target_check check ((target_type is null) = (target_id is null));

create index activity_events_group_idx on activity_events (group_id, id desc) include (actor_id, object_id);
create index activity_events_audience_idx on activity_events (audience_user_id) where audience_user_id is not null;

-- Who acted in a group: exact per-actor counts (the "and N others"), and an actor filter's index.
create table activity_group_actors (
    group_id bigint not null references activity_groups (id) on delete cascade,
    actor_id bigint not null references users (id) on delete cascade,
    event_count integer not null check (event_count >= 1),
    first_seq bigint not null,
    last_seq bigint not null,
    primary key (group_id, actor_id)
);

create index activity_group_actors_actor_idx on activity_group_actors (actor_id, last_seq desc) include (group_id);

-- What a group touched: one row per object, for the sample objects (most recent first).
create table activity_group_objects (
    group_id bigint not null references activity_groups (id) on delete cascade,
    object_id bigint not null,
    event_count integer not null check (event_count >= 1),
    last_seq bigint not null,
    primary key (group_id, object_id)
);

create index activity_group_objects_recent_idx on activity_group_objects (group_id, last_seq desc) include (object_id);

-- Titles of the objects events talk about, maintained from the events themselves (the latest title
-- an event carried). A deleted object is a tombstone: its type and id stay, its title is erased.
create table activity_objects (
    object_type text not null,
    object_id bigint not null,
    title text,
    deleted boolean not null default false,
    seq bigint not null,
    primary key (object_type, object_id),
    check (not (deleted and title is not null))
);

-- Read state. An event is read when its id is at most the reader's read_through, at most the
-- read_through of its group for the reader, or marked read on its own (activity_event_reads).
-- seen_through is the bell's marker: groups with activity after it are "unseen".
create table activity_reader_state (
    user_id bigint primary key references users (id) on delete cascade,
    seen_through bigint not null default 0,
    read_through bigint not null default 0
);

create table activity_group_reads (
    user_id bigint not null references users (id) on delete cascade,
    group_id bigint not null references activity_groups (id) on delete cascade,
    read_through bigint not null,
    primary key (user_id, group_id)
);

create index activity_group_reads_group_idx on activity_group_reads (group_id);

create table activity_event_reads (
    user_id bigint not null references users (id) on delete cascade,
    event_id bigint not null references activity_events (id) on delete cascade,
    group_id bigint not null references activity_groups (id) on delete cascade,
    primary key (user_id, event_id)
);

create index activity_event_reads_group_idx on activity_event_reads (group_id, user_id);
create index activity_event_reads_event_idx on activity_event_reads (event_id);

-- The one definition of who may see a group (or an event: same columns): administrators see
-- everything; a group with an audience only that user, and only while a member of its project if it
-- has one; any other group the members of its project, at the time of the query.
create function activity_may_see(
    reader_id bigint, reader_is_admin boolean, project_id bigint, audience_user_id bigint
) returns boolean
language sql stable parallel safe
return reader_is_admin
    or (
        (audience_user_id is null or audience_user_id = reader_id)
        and (
            (project_id is null and audience_user_id is not null)
            or exists (
                select 1 from project_members m
                where m.project_id = activity_may_see.project_id and m.user_id = reader_id
            )
        )
    );

-- migrate:down
drop function activity_may_see(bigint, boolean, bigint, bigint);
drop table activity_event_reads;
drop table activity_group_reads;
drop table activity_reader_state;
drop table activity_objects;
drop table activity_group_objects;
drop table activity_group_actors;
alter table activity_events
    drop constraint activity_events_target_check,
    drop column target_id,
    drop column target_type,
    drop column audience_user_id,
    drop column group_id;
drop table activity_groups;
