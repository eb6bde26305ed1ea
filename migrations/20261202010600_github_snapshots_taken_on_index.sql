-- migrate:up transaction:false
-- The retention deletes snapshots GITHUB_SNAPSHOT_RETENTION_DAYS after their day, oldest first (one
-- row per tracked login and day: without the index, every chunk reads them all). Concurrently, for
-- the snapshot cron's writes (see 20261202010500 for why one index per file).
create index concurrently if not exists github_snapshots_taken_on_idx on github_snapshots (taken_on);

-- migrate:down transaction:false
drop index concurrently if exists github_snapshots_taken_on_idx;
