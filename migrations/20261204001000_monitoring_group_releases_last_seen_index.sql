-- migrate:up transaction:false
-- The retention purges the releases a group has not seen for MONITORING_RETENTION_DAYS
-- (PurgeGroupReleasesBefore): a long-lived group gained one row per release forever, and its detail
-- read them all. The purge chooses its chunk oldest first through this index. Concurrently, one
-- index per file (see 20261202010500).
create index concurrently if not exists monitoring_group_releases_last_seen_idx
    on monitoring_group_releases (last_seen_at);

-- migrate:down transaction:false
drop index concurrently if exists monitoring_group_releases_last_seen_idx;
