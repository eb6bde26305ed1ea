-- name: GetGithubProfile :one
select login, data, fetched_at from github_profiles where login = @login;

-- name: GetGithubProfileFetchedAt :one
select fetched_at from github_profiles where login = @login;

-- name: UpsertGithubProfile :execrows
-- Never replaces newer data with older data (two fetches finishing out of order).
insert into github_profiles (login, data, fetched_at)
values (@login, @data, @fetched_at)
on conflict (login) do update
set data = excluded.data, fetched_at = excluded.fetched_at
where github_profiles.fetched_at <= excluded.fetched_at;

-- name: LockGithubTracking :exec
-- Serialises one user's tracking changes, so the per-user bound holds under concurrent requests.
select pg_advisory_xact_lock(hashtextextended(concat('github_tracked:', @user_id::bigint), 0));

-- name: CountGithubTracked :one
select count(*) as tracked from github_tracked where user_id = @user_id;

-- name: GetGithubTracked :one
select * from github_tracked where user_id = @user_id and login = @login;

-- name: TrackGithubLogin :one
insert into github_tracked (user_id, login) values (@user_id, @login)
on conflict (user_id, login) do nothing
returning *;

-- name: UntrackGithubLogin :execrows
delete from github_tracked where user_id = @user_id and login = @login;

-- name: ListGithubTracked :many
-- Keyset by id (the order in which the user started tracking).
select * from github_tracked
where user_id = @user_id and id > @after_id
order by id
limit @row_limit;

-- name: ListGithubLoginsDue :many
-- Tracked logins without a snapshot for the day; the cron takes a batch per run. Never tried first,
-- then the longest untried: a login that keeps failing goes behind every other due login.
select t.login
from github_tracked t
left join github_snapshot_attempts a on a.login = t.login
where not exists (
    select 1 from github_snapshots s where s.login = t.login and s.taken_on = @taken_on::date
)
group by t.login, a.attempted_at
order by a.attempted_at nulls first, t.login
limit @batch_size;

-- name: RecordGithubSnapshotAttempt :exec
-- Written before the login is fetched, so a run that dies during the fetch also moves it back.
insert into github_snapshot_attempts (login, attempted_at) values (@login, @attempted_at)
on conflict (login) do update set attempted_at = excluded.attempted_at;

-- name: PruneGithubSnapshotAttempts :exec
-- Forgets logins nobody tracks any more (untracked, or their trackers' accounts deleted).
delete from github_snapshot_attempts a
where not exists (select 1 from github_tracked t where t.login = a.login);

-- name: InsertGithubSnapshot :execrows
-- At most one snapshot per login and day: a re-delivered cron run changes nothing.
insert into github_snapshots (
    login, taken_on, taken_at, followers, following, public_repos, repos_counted,
    total_stars, total_forks, language_bytes
)
values (
    @login, @taken_on, @taken_at, @followers, @following, @public_repos, @repos_counted,
    @total_stars, @total_forks, @language_bytes
)
on conflict (login, taken_on) do nothing;

-- name: ListGithubSnapshots :many
-- The caller bounds the range (at most GITHUB_HISTORY_MAX_DAYS days).
select * from github_snapshots
where login = @login and taken_on between @first_day::date and @last_day::date
order by taken_on;
