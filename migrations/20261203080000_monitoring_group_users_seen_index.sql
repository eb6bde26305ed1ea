-- migrate:up transaction:false
-- The users a group saw since a moment (TreeUsersSince: the users threshold of the alert rules,
-- evaluated at every write of a group) and the hourly retention (PurgeGroupUsersBefore: the rows of
-- users a group has not seen for MONITORING_RETENTION_DAYS, group by group): without this index both
-- read every user row of a group, or of the table, from the heap. Concurrently, one index per file
-- (see 20261202010500).
create index concurrently if not exists monitoring_group_users_seen_idx
    on monitoring_group_users (group_id, last_seen_at);

-- migrate:down transaction:false
drop index concurrently if exists monitoring_group_users_seen_idx;
