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
-- Tracked logins without a snapshot for the day, in a stable order; the cron takes a batch per run.
select distinct t.login
from github_tracked t
where not exists (
    select 1 from github_snapshots s where s.login = t.login and s.taken_on = @taken_on::date
)
order by t.login
limit @batch_size;

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
