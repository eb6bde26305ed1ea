-- migrate:up transaction:false
-- The retention of the GitHub domain (GithubService.purge_expired, a daily cron) deletes profiles of
-- logins nobody tracks GITHUB_PROFILE_RETENTION_DAYS after their last fetch, oldest first: without
-- this index every chunk of the purge would read the whole table (each profile carries its JSON).
-- Built concurrently (lookups and fetches keep writing profiles meanwhile), one index per file: a
-- concurrent build cannot run in a transaction, and dbmate sends a file as one query. A build that
-- failed leaves an INVALID index behind, which `migrate` drops before running this again.
create index concurrently if not exists github_profiles_fetched_at_idx on github_profiles (fetched_at);

-- migrate:down transaction:false
drop index concurrently if exists github_profiles_fetched_at_idx;
