-- name: CreateUser :one
insert into users (email, display_name, password_hash, role)
values (@email, @display_name, @password_hash, @role)
on conflict (email) do nothing
returning *;

-- name: GetUserByEmail :one
select * from users where email = @email;

-- name: GetUserById :one
select * from users where id = @id;

-- name: GetUserForShare :one
-- Tokens are issued under this lock: a change of the user's role, activity or password (which
-- takes the row, then revokes the user's tokens) waits for the issue, or is seen by it.
select * from users where id = @id for share;

-- name: LockActiveAdmin :one
-- An administrator's write holds the actor's row until its commit: a demotion or deactivation
-- (GetUsersForUpdate) waits for the write, or the write sees it and finds no row here.
select id from users where id = @id and role = 'admin' and is_active for share;

-- name: GetUsersForUpdate :many
-- An administrator's change locks the actor and the target, in id order.
select * from users where id = any(@ids::bigint[]) order by id for update;

-- name: RehashUserPassword :one
-- Only over the hash that was verified: a password changed meanwhile is kept.
update users set password_hash = @password_hash, updated_at = now()
where id = @id and password_hash = @verified_hash
returning *;

-- name: UpdateUserProfile :one
update users
set display_name = coalesce(sqlc.narg(display_name), display_name),
    password_hash = coalesce(sqlc.narg(password_hash), password_hash),
    updated_at = now()
where id = @id
returning *;

-- name: AdminUpdateUser :one
update users
set role = coalesce(sqlc.narg(role)::user_role, role),
    is_active = coalesce(sqlc.narg(is_active)::boolean, is_active),
    updated_at = now()
where id = @id
returning *;

-- name: ListUsers :many
-- Keyset pagination by id; role and active are optional filters.
select * from users
where (sqlc.narg(role)::user_role is null or role = sqlc.narg(role)::user_role)
  and (sqlc.narg(is_active)::boolean is null or is_active = sqlc.narg(is_active)::boolean)
  and id > @after_id
order by id
limit @row_limit;

-- name: CountUsers :one
select count(*) from users;

-- name: InsertRefreshToken :exec
insert into refresh_tokens (user_id, family_id, token_hash, expires_at)
values (@user_id, @family_id, @token_hash, @expires_at);

-- name: GetRefreshTokenOwnerForShare :one
-- The owner of a refresh token, locked like GetUserForShare (the user row before the token row).
select u.* from refresh_tokens t join users u on u.id = t.user_id
where t.token_hash = @token_hash
for share of u;

-- name: GetRefreshTokenFamily :one
-- Which session a token belongs to, read without a lock: LockRefreshFamilies comes first.
select family_id from refresh_tokens where token_hash = @token_hash;

-- name: LockRefreshFamilies :exec
-- The lock that stands for a session (a refresh-token family) until the transaction ends. Whatever
-- changes a family's tokens (a rotation, a reuse's revocation, a logout, revoking a user's sessions)
-- takes it before any of their rows, several in ascending key order, so that no two transactions
-- ever hold a token row each that the other needs (a rotation locked the presented token and then
-- the family's others, a logout the family's tokens in scan order: a deadlock). The key space
-- `accounts-family:` is this query's alone; two families sharing a key only wait for each other.
select pg_advisory_xact_lock(family_key) from (
    select distinct hashtextextended(concat('accounts-family:', family_id), 0) as family_key
    from unnest(@family_ids::uuid[]) as family_id
    order by family_key
) as family_keys;

-- name: GetRefreshTokenForUpdate :one
-- After LockRefreshFamilies, in a statement of its own (its snapshot then follows the wait).
select * from refresh_tokens where token_hash = @token_hash for update;

-- name: IsRefreshTokenRecentlySuperseded :one
-- Whether the spent token @id is its family's immediate predecessor, rotated less than @grace_s
-- seconds ago: the next token of the family (tokens form one chain: only a family's one unspent
-- token rotates, under the family's lock) is neither spent nor revoked and was issued within the
-- grace: two tabs refreshing with the same token at once. An older token, or one whose successor
-- was used already, is a leak.
select coalesce((
    select successor.used_at is null and successor.revoked_at is null
        and successor.issued_at > now() - make_interval(secs => @grace_s::float8)
    from refresh_tokens successor
    where successor.family_id = @family_id and successor.id > @id
    order by successor.id
    limit 1
), false)::boolean as superseded;

-- name: MarkRefreshTokenUsed :exec
update refresh_tokens set used_at = now() where id = @id;

-- name: ListLiveUserFamilies :many
-- The sessions of a user that still have a live refresh token (the caller holds the user's row
-- FOR UPDATE: no session of the user begins or rotates meanwhile).
select distinct family_id from refresh_tokens
where user_id = @user_id and revoked_at is null
order by family_id;

-- name: RevokeRefreshFamilies :execrows
-- Under LockRefreshFamilies of these families.
update refresh_tokens set revoked_at = now()
where family_id = any(@family_ids::uuid[]) and revoked_at is null;

-- name: IsFamilyRevoked :one
-- The database answer while a process's in-memory copy of revoked_families may be stale (its
-- listener is not connected).
select exists (select 1 from revoked_families where family_id = @family_id) as revoked;

-- name: RecordRevokedFamilies :exec
-- Their access tokens are refused from the commit on, in every process: the table's trigger
-- NOTIFYs `revoked_families` in this transaction.
insert into revoked_families (family_id)
select unnest(@family_ids::uuid[])
on conflict (family_id) do update set revoked_at = now();

-- name: RecentlyRevokedFamilies :many
-- What a process loads when it starts listening (again): the families revoked within the last
-- `within_s` seconds (the longest an access token of theirs can still be unexpired).
select family_id from revoked_families
where revoked_at > now() - make_interval(secs => @within_s::float8);

-- name: PurgeRevokedFamilies :execrows
-- On the way of every revocation: rows another purge holds are left to it (no revocation waits for
-- another's housekeeping).
delete from revoked_families
where family_id in (
    select family_id from revoked_families
    where revoked_at < now() - make_interval(secs => @older_than_s::float8)
    for update skip locked
);

-- name: ListenForRevokedFamilies :exec
listen revoked_families;

-- name: GetFamilyState :one
-- When a session (refresh-token family) began (its absolute lifetime counts from here), and whether
-- any of its tokens was revoked: a token inserted by a rotation that a revocation of the family
-- waited for is not in that revocation's snapshot, and the family is over all the same.
select min(issued_at)::timestamptz as started_at, coalesce(bool_or(revoked_at is not null), false)::boolean as revoked
from refresh_tokens where family_id = @family_id;

-- name: PurgeExpiredRefreshTokens :execrows
-- Tokens of families that are over (every token expired more than @grace_s ago: an access token
-- issued with the last one may still be live, and revoking the user's sessions must find its
-- family); a live family keeps its spent tokens, which reuse detection needs. Rows a revocation
-- holds are skipped (a later run deletes them): the purge takes no family's lock, so it must never
-- wait for a token row while holding other families' rows.
delete from refresh_tokens
where id in (
    select r.id from refresh_tokens r
    where r.expires_at < now() - make_interval(secs => @grace_s::float8)
      and not exists (
        select 1 from refresh_tokens l
        where l.family_id = r.family_id and l.expires_at >= now() - make_interval(secs => @grace_s::float8)
      )
    for update of r skip locked
);

-- name: CountSignupsBetween :one
-- Accounts created in [since, until) (the daily monitoring report).
select count(*)::bigint as signups from users where created_at >= @since and created_at < @until;
