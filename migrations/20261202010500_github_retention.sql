-- migrate:up
-- The retention of the GitHub domain (GithubService.purge_expired, a daily cron): profiles of logins
-- nobody tracks are deleted GITHUB_PROFILE_RETENTION_DAYS after their last fetch, snapshots
-- GITHUB_SNAPSHOT_RETENTION_DAYS after their day, and the snapshots and snapshot attempt of a login
-- nobody tracks any more GITHUB_PROFILE_RETENTION_DAYS after its last attempt (so
-- github_snapshot_attempts now keeps a login for that long after it is untracked: the row says when
-- the login was last snapshotted).
--
-- Each chunk of the purge takes its oldest rows first: without these indexes every chunk would read
-- the whole table (profiles carry their JSON, snapshots are one row per tracked login and day).
create index github_profiles_fetched_at_idx on github_profiles (fetched_at);
create index github_snapshots_taken_on_idx on github_snapshots (taken_on);

-- migrate:down
drop index github_snapshots_taken_on_idx;
drop index github_profiles_fetched_at_idx;
