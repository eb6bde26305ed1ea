-- migrate:up transaction:false
-- The groups an event may join are found by time, not by insertion order (OpenActivityGroups): a
-- stream's groups by their last event, newest first. It replaces activity_groups_stream_idx
-- (stream, id desc), which only LatestActivityGroups read (20261205190100 drops it).
-- Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists activity_groups_stream_last_idx
    on activity_groups (stream, last_at desc, id desc);

-- migrate:down transaction:false
drop index concurrently if exists activity_groups_stream_last_idx;
