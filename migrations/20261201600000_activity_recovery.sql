-- migrate:up
-- How far the feed's recovery (app/domains/activity/recovery.py) has checked the outbox: every
-- record_activity row up to this id is stored in activity_events, or was dropped as undeliverable
-- (its project or a user gone). One row (or none: nothing checked yet).
create table activity_recovery (
    id boolean primary key default true check (id),
    checked_through bigint not null
);

-- When the oldest transaction that has written anything began (null: none is open). A row it has
-- yet to commit has a higher id than every row committed before it began: the recovery passes no
-- row published after this. Only sessions of the caller's role are visible, which is every session
-- of the application.
create function oldest_open_write_started_at() returns timestamptz
language sql stable as $$
    select min(xact_start) from pg_stat_activity where backend_xid is not null
$$;

-- migrate:down
drop function oldest_open_write_started_at();
drop table activity_recovery;
