-- migrate:up transaction:false
-- The checks cron (every minute) ends timed ignores (ExpireTimedIgnores): without an index it read
-- every group each time (review: 100,000 rows filtered, 19 ms, growing with the groups kept). Only the
-- few groups ignored until a time are in this one. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists monitoring_groups_timed_ignore_idx
    on monitoring_groups (ignore_until)
    where status = 'ignored' and ignore_mode = 'until_time' and parent_id is null;

-- migrate:down transaction:false
drop index concurrently if exists monitoring_groups_timed_ignore_idx;
