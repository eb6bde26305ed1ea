-- migrate:up transaction:false
-- Read by no statement since OpenActivityGroups finds groups by time (20261205190000).
drop index concurrently if exists activity_groups_stream_idx;

-- migrate:down transaction:false
create index concurrently if not exists activity_groups_stream_idx on activity_groups (stream, id desc);
