-- migrate:up
-- How far the feed's recovery (app/domains/activity/recovery.py) has checked the outbox: every
-- record_activity row up to this id is stored in activity_events, or was dropped as undeliverable
-- (its project or a user gone). One row (or none: nothing checked yet).
create table activity_recovery (
    id boolean primary key default true check (id),
    checked_through bigint not null
);

-- migrate:down
drop table activity_recovery;
