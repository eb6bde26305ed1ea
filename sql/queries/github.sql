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

-- name: LockGithubProfileKept :one
-- Taken by tracking before it writes the tracked row: the retention's purge locks a profile before
-- deleting it and checks again under the lock whether the login is tracked, so either the purge waits
-- for the tracking and sees it, or the tracking waits for the purge and finds the profile gone (and
-- looks the login up again).
select login from github_profiles where login = @login for key share;

-- name: LockGithubSnapshotAttemptKept :exec
-- The same for the login's snapshot history (its attempt's row, if it was ever snapshotted).
select login from github_snapshot_attempts where login = @login for key share;

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
-- A login is tracked by many users (one row each): the distinct logins are found by a skip scan of
-- github_tracked_login_idx (each step the next login after the last, one index entry), so the cron
-- reads one tracked row per login, not every user's (a Seq Scan of 50,000 rows for 2,000 logins, 24
-- times a day, though none was due). Only logins an active account tracks: a deactivated account's
-- list is kept (it is back on reactivation, with its history) but costs no fetch meanwhile: checked
-- on the due logins only (materialized first), one index probe each (a LATERAL with a LIMIT), since as
-- one more condition the planner was free to join all of github_tracked with users (52,001 rows read
-- for 2,000 logins, none due).
with recursive logins (login) as (
    (select t.login from github_tracked t order by t.login limit 1)
    union all
    select (select t.login from github_tracked t where t.login > l.login order by t.login limit 1)
    from logins l
    where l.login is not null
)
, due as materialized (
    select l.login
    from logins l
    where l.login is not null
      and not exists (
        select 1 from github_snapshots s where s.login = l.login and s.taken_on = @taken_on::date
      )
      and not exists (  -- its own failure (gone, blocked) settled it for the day, or a refused answer lately
        select 1 from github_snapshot_attempts f
        where f.login = l.login
          and (f.failed_on = @taken_on::date or f.refused_at > @refused_since::timestamptz)
      )
)
select d.login::text as login
from due d
cross join lateral (  -- a LIMIT: one probe of github_tracked_login_idx per due login, never a join
    select 1 from github_tracked t join users u on u.id = t.user_id
    where t.login = d.login and u.is_active
    limit 1
) active
left join github_snapshot_attempts a on a.login = d.login
order by a.attempted_at nulls first, d.login
limit @batch_size;

-- name: RecordGithubSnapshotAttempt :exec
-- Written before the login is fetched, so a run that dies during the fetch also moves it back.
insert into github_snapshot_attempts (login, attempted_at) values (@login, @attempted_at)
on conflict (login) do update set attempted_at = excluded.attempted_at;

-- name: RecordGithubSnapshotFailure :exec
-- The login's own failure (not found, blocked: 451/403): not tried again until the next snapshot day.
update github_snapshot_attempts set failed_on = @failed_on::date where login = @login;

-- name: RecordGithubSnapshotRefusal :exec
-- An answer the client refused: not tried again for a few hours (ListGithubLoginsDue's refused_since).
update github_snapshot_attempts set refused_at = @refused_at where login = @login;

-- name: InsertGithubSnapshot :execrows
-- At most one snapshot per login and day: a re-delivered cron run changes nothing.
insert into github_snapshots (
    login, taken_on, taken_at, github_id, followers, following, public_repos, repos_counted,
    total_stars, total_forks, language_bytes
)
values (
    @login, @taken_on, @taken_at, @github_id, @followers, @following, @public_repos, @repos_counted,
    @total_stars, @total_forks, @language_bytes
)
on conflict (login, taken_on) do nothing;

-- name: ListGithubSnapshots :many
-- The caller bounds the range (at most GITHUB_HISTORY_MAX_DAYS days).
select * from github_snapshots
where login = @login and taken_on between @first_day::date and @last_day::date
order by taken_on;

-- name: LockExpiredGithubProfiles :many
-- Retention (GithubService.purge_expired), one chunk: profiles of logins no active account tracks (a
-- deactivated account's logins are not fetched any more, nor kept: third parties' names, bios and public
-- e-mails; its tracking rows stay, and a reactivated account's logins are fetched again), not fetched
-- since @fetched_before, locked oldest first (a fetch committed while this waits for a row changed
-- its fetched_at: the lock re-checks it and leaves the row out).
select p.login
from github_profiles p
where p.fetched_at < @fetched_before::timestamptz
  and not exists (
      select 1 from github_tracked t join users u on u.id = t.user_id
      where t.login = p.login and u.is_active
  )
order by p.fetched_at, p.login
limit @chunk_size::integer
for update of p;

-- name: DeleteExpiredGithubProfiles :execrows
-- The locked chunk, its condition checked again: this statement's snapshot is taken after the locks,
-- so a login tracked before a lock was granted (tracking holds LockGithubProfileKept) keeps its profile.
delete from github_profiles p
where p.login = any(@logins::text[])
  and p.fetched_at < @fetched_before::timestamptz
  and not exists (
      select 1 from github_tracked t join users u on u.id = t.user_id
      where t.login = p.login and u.is_active
  );

-- name: LockForgottenGithubLogins :many
-- Retention, one chunk: logins no active account tracks any more whose last snapshot attempt is older
-- than @attempted_before, locked oldest first (tracking holds LockGithubSnapshotAttemptKept).
select a.login
from github_snapshot_attempts a
where a.attempted_at < @attempted_before::timestamptz
  and not exists (
      select 1 from github_tracked t join users u on u.id = t.user_id
      where t.login = a.login and u.is_active
  )
order by a.attempted_at, a.login
limit @chunk_size::integer
for update of a;

-- name: DeleteForgottenGithubSnapshots :execrows
-- Up to @chunk_size snapshots of the locked logins still forgotten; the caller repeats it until a
-- chunk comes back short, then forgets their attempts (DeleteForgottenGithubAttempts).
delete from github_snapshots doomed
where doomed.ctid = any(array(
    select f.ctid
    from github_snapshots f
    join github_snapshot_attempts a on a.login = f.login
    where f.login = any(@logins::text[])
      and a.attempted_at < @attempted_before::timestamptz
      and not exists (
          select 1 from github_tracked t join users u on u.id = t.user_id
          where t.login = f.login and u.is_active
      )
    limit @chunk_size::integer
    for update of f
));

-- name: DeleteForgottenGithubAttempts :execrows
-- The locked logins still forgotten whose snapshots are all deleted.
delete from github_snapshot_attempts a
where a.login = any(@logins::text[])
  and a.attempted_at < @attempted_before::timestamptz
  and not exists (
      select 1 from github_tracked t join users u on u.id = t.user_id
      where t.login = a.login and u.is_active
  )
  and not exists (select 1 from github_snapshots s where s.login = a.login);

-- name: DeleteOldGithubSnapshots :execrows
-- Retention, one chunk: snapshots taken before @taken_before, tracked or not (rows never change).
delete from github_snapshots doomed
where doomed.ctid = any(array(
    select c.ctid from github_snapshots c
    where c.taken_on < @taken_before::date
    order by c.taken_on
    limit @chunk_size::integer
    for update
));

-- name: ForgetTrackingOfUser :execrows
-- The account's erasure: the logins it tracked are its own data; their profiles and histories go with
-- the retention once no active account tracks them.
delete from github_tracked where user_id = @user_id;
