-- migrate:up
-- Which GitHub account held the login on each snapshot's day (GitHub's numeric user id, which a
-- rename keeps). A login renamed away and registered again by someone else, or taken by an account
-- renamed to it, changes hands: the history then starts a new segment instead of subtracting one
-- account's followers from another's. Null for snapshots taken before it was recorded (unknown).
--
-- A login's own failure in the snapshot cron (404: gone or renamed; 451/403: blocked) settles it for
-- that snapshot day (failed_on), so it is tried once a day, not in every hourly run; an answer the
-- client refuses (refused_at) holds it back for hours, not the day (it may be a proxy's, everyone's);
-- an outage or a spent quota holds nothing back.
-- Nullable columns without defaults rewrite nothing, but take each table's lock: behind a long reader
-- they would hold the cron's writes (CONVENTIONS).
set local lock_timeout = '3s';
alter table github_snapshots add column github_id bigint;
alter table github_snapshot_attempts add column failed_on date;
alter table github_snapshot_attempts add column refused_at timestamptz;

-- migrate:down
set local lock_timeout = '3s';
alter table github_snapshot_attempts drop column refused_at;
alter table github_snapshot_attempts drop column failed_on;
alter table github_snapshots drop column github_id;
