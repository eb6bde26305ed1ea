-- name: CreateUser :one
insert into users (email, display_name, password_hash, role)
values (@email, @display_name, @password_hash, @role)
on conflict (email) do nothing
returning *;

-- name: GetUserByEmail :one
select * from users where email = @email;

-- name: GetUserById :one
select * from users where id = @id;

-- name: GetUserForNewSession :one
-- A session begins under this lock (a login, a dashboard sign-in): a change of the user's role,
-- activity or password (which takes the row FOR UPDATE, then revokes the user's sessions) waits for
-- it, or is seen by it. Stronger than the FOR SHARE a rotation or a logout takes
-- (GetRefreshTokenOwnerForShare, LockSessionOwner): while it is held none of the user's sessions
-- changes, so the sessions beyond SESSIONS_PER_USER_MAX (ListSessionsBeyond) end without a lock of
-- their own, and two sign-ins of one user run one after the other (each counts the other's session).
-- NO KEY UPDATE, not UPDATE: rows of other tables that reference the user (a foreign-key check's KEY
-- SHARE) never wait for it.
select * from users where id = @id for no key update;

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
-- The given fields set (null: kept), only when that changes the user: no row when it changes nothing
-- (updated_at stays), as UpdateProject. Never an erased account's (an erased account never changes).
update users
set display_name = coalesce(sqlc.narg(display_name), display_name),
    password_hash = coalesce(sqlc.narg(password_hash), password_hash),
    updated_at = now()
where id = @id and erased_at is null
  and (display_name, password_hash) is distinct from
      (coalesce(sqlc.narg(display_name), display_name), coalesce(sqlc.narg(password_hash), password_hash))
returning *;

-- name: AdminUpdateUser :one
-- The given fields set (null: kept), only when that changes the user: no row when it changes nothing
-- (updated_at stays), as UpdateUserProfile.
update users
set role = coalesce(sqlc.narg(role)::user_role, role),
    is_active = coalesce(sqlc.narg(is_active)::boolean, is_active),
    updated_at = now()
where id = @id
  and (role, is_active) is distinct from
      (coalesce(sqlc.narg(role)::user_role, role), coalesce(sqlc.narg(is_active)::boolean, is_active))
returning *;

-- name: ListUsers :many
-- Keyset pagination by id; active is an optional filter (no index starts with it: every plan, custom
-- or generic, walks the ids). A role is another statement (ListUsersWithRole...), chosen by the
-- caller: a prepared statement's generic plan serving an optional role walked users_pkey with the
-- role as a filter, every user to list the few administrators.
select * from users
where (sqlc.narg(is_active)::boolean is null or is_active = sqlc.narg(is_active)::boolean)
  and id > @after_id
order by id
limit @row_limit;

-- name: ListUsersWithRole :many
-- One role's users by id: that role's range of users_role_id_idx. The role is a range of one value,
-- not `role = @role`: with an equality the planner drops `role` from the order, and the generic plan
-- (which prices either role at half the users) walks users_pkey with the role as a filter.
select * from users
where role >= @role and role <= @role
  and id > @after_id
order by role, id
limit @row_limit;

-- name: ListUsersWithRoleAndState :many
-- One role's active (or inactive) users by id: that range of users_role_active_idx (a range of one
-- role, as in ListUsersWithRole).
select * from users
where role >= @role and role <= @role
  and is_active = @is_active
  and id > @after_id
order by role, id
limit @row_limit;

-- name: CountUsers :one
select count(*) from users;

-- name: InsertRefreshToken :exec
insert into refresh_tokens (user_id, family_id, token_hash, expires_at)
values (@user_id, @family_id, @token_hash, @expires_at);

-- name: GetRefreshTokenOwnerForShare :one
-- The owner of a refresh token, its row locked FOR SHARE before the session's lock and the token's
-- rows: a revocation of the user's sessions (FOR UPDATE) or a sign-in (GetUserForNewSession) waits
-- for the rotation, or the rotation for it.
select u.* from refresh_tokens t join users u on u.id = t.user_id
where t.token_hash = @token_hash
for share of u;

-- name: GetRefreshTokenFamily :one
-- Which session a token belongs to, read without a lock: LockRefreshFamilies comes first.
select family_id from refresh_tokens where token_hash = @token_hash;

-- name: LockSessionOwner :one
-- The owner of a session (refresh-token family), its row locked FOR SHARE: a logout takes it before
-- the session's lock, as a rotation does, so that whatever holds the user's row exclusively (revoking
-- the user's sessions, a sign-in) changes the user's sessions without a lock per session. None when
-- the session has no token left (purged): there is nothing to lock. The owner is read from the
-- session's first token, the first entry from the session on in refresh_tokens_family_order_idx
-- (family_id, id) (see GetFamilyState for why a range and an order).
select u.id from users u
where u.id = (
    select first_token.user_id from (
        select family_id, user_id from refresh_tokens
        where family_id >= @family_id
        order by family_id, id
        limit 1
    ) as first_token
    where first_token.family_id = @family_id
)
for share;

-- name: LockRefreshFamilies :exec
-- The lock that stands for a session (a refresh-token family) until the transaction ends, taken after
-- the user's row FOR SHARE (GetRefreshTokenOwnerForShare, LockSessionOwner). A rotation, a reuse's
-- revocation and a logout take it before any of the family's token rows, so that no two of them ever
-- hold a token row each that the other needs (a rotation locked the presented token and then the
-- family's others, a logout the family's tokens in scan order: a deadlock). What holds the user's row
-- exclusively (revoking the user's sessions FOR UPDATE, a sign-in's GetUserForNewSession) needs none:
-- nothing else changes the user's sessions meanwhile (one lock per session would also exhaust the
-- server's shared lock table for a user with thousands of them). The key space `accounts-family:` is
-- this query's alone; two families sharing a key only wait for each other.
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
-- was used already, is a leak. The successor is the entry after (@family_id, @id) in
-- refresh_tokens_family_order_idx (family_id, id), if it is the family's (none: no successor, not
-- superseded); the family's other tokens are not read (see GetFamilyState for why a row comparison
-- and not `family_id = @family_id and id > @id`). The grace is measured from the rotation (the
-- successor's issued_at, the rotation's transaction time) to the clock now, at this check:
-- clock_timestamp(), not now(), the reusing transaction's start, taken before it waited for the
-- family's lock (behind the very rotation it duplicates: with now(), a rotation that began after it
-- was within any grace, 0 included, and a long wait stretched the grace by the wait).
select coalesce((
    select successor.family_id = @family_id and successor.used_at is null and successor.revoked_at is null
        and successor.issued_at > clock_timestamp() - make_interval(secs => @grace_s::float8)
    from refresh_tokens successor
    where (successor.family_id, successor.id) > (@family_id::uuid, @id::bigint)
    order by successor.family_id, successor.id
    limit 1
), false)::boolean as superseded;

-- name: RefreshRotationWait :one
-- Seconds until the session (refresh-token family) may rotate again: 0 while it rotated fewer than
-- @per_hour times within the last hour, else until the oldest of those rotations is an hour old. Asked
-- by a rotation of the family's one unspent token (its newest), under the family's lock: the
-- @per_hour-th most recent rotation spent the family's (@per_hour + 1)-th newest token, whose used_at
-- is that rotation's time (none: fewer rotations than that, the family's first token being the
-- login's). Read walking refresh_tokens_family_order_idx (family_id, id) backwards from the family's
-- last entry, @per_hour + 1 of them (those of the sessions before it when the family has fewer), never
-- the family's older history: a range and that order, not `family_id = @family_id order by id desc`,
-- as in GetFamilyState (the planner may walk the primary key for a family that fills the table).
select coalesce((
    select extract(epoch from spent.used_at + interval '1 hour' - now())::float8
    from (
        select family_id, used_at from refresh_tokens
        where family_id <= @family_id
        order by family_id desc, id desc
        offset @per_hour::integer
        limit 1
    ) as spent
    where spent.family_id = @family_id and spent.used_at > now() - interval '1 hour'
), 0)::float8 as wait_s;

-- name: MarkRefreshTokenUsed :exec
update refresh_tokens set used_at = now() where id = @id;

-- name: ListLiveUserFamilies :many
-- The sessions of a user that still have a live refresh token (the caller holds the user's row
-- FOR UPDATE: no session of the user begins, rotates or ends meanwhile): found by their one token
-- neither revoked nor spent (as in ListSessionsBeyond), through refresh_tokens_unspent_user_idx, so
-- that the spent tokens of long sessions (hundreds of thousands) are not read. A session without one
-- is over: its unspent token was revoked, or purged with the ended family.
select distinct family_id from refresh_tokens
where user_id = @user_id and revoked_at is null and used_at is null
order by family_id;

-- name: ListSessionsBeyond :many
-- The user's sessions with a refresh token neither revoked nor spent (each live session has exactly
-- one: a rotation spends its token and issues the next; the spent ones, thousands for a long session,
-- need not be read), but for the @kept to keep: sessions still alive first (their token unexpired:
-- an ended one not purged yet must not take a live one's place), then the most recently used (the
-- latest token issued: a login or a rotation; a dashboard session ranks by its sign-in); under
-- GetUserForNewSession. The partial index refresh_tokens_unspent_user_idx holds exactly these rows.
select family_id from refresh_tokens
where user_id = @user_id and revoked_at is null and used_at is null
group by family_id
order by bool_or(expires_at > now()) desc, max(issued_at) desc, family_id desc
offset @kept;

-- name: RevokeRefreshFamilies :execrows
-- Under LockRefreshFamilies of these families, or the user's row held exclusively (FOR UPDATE, or
-- GetUserForNewSession). Every token of the families is marked, the spent ones too: once per session,
-- at its end (a later revocation finds none left to mark).
update refresh_tokens set revoked_at = now()
where family_id = any(@family_ids::uuid[]) and revoked_at is null;

-- name: SessionStillStands :one
-- Whether a session still stands, read in the caller's transaction under its user's row FOR SHARE: a
-- revocation of the user's sessions in progress (a deactivation, a demotion, a password change: FOR
-- UPDATE) is waited for and then seen. None when the user is gone.
select u.is_active and not exists (select 1 from revoked_families r where r.family_id = @family_id) as stands
from users u
where u.id = @user_id
for share of u;

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
-- When a session (refresh-token family) began (its absolute lifetime counts from here: the issue of its
-- first token, the login's), and whether any of its tokens was revoked: a token inserted by a rotation
-- that a revocation of the family waited for is not in that revocation's snapshot, and the family is
-- over all the same. None when the family has no token left. Each rotation asks, so neither part
-- reads the family's spent tokens (one per rotation, kept until the family is over): a revoked token
-- is any entry of the partial refresh_tokens_revoked_family_idx, and the first token the first entry
-- from the family on in refresh_tokens_family_order_idx (family_id, id), kept if it is the family's.
-- A range and that order, not `family_id = @family_id order by id`: for a family that fills most of
-- the table (one session rotated millions of times) the planner expects its rows everywhere and
-- walks the primary key (or the table) in id order from the start, reading every other session's
-- tokens issued before the family's first (measured: tests/functional/test_accounts_refresh_cost.py);
-- only the (family_id, id) index gives this order.
select first_token.issued_at as started_at,
    exists (
        select 1 from refresh_tokens revoked
        where revoked.family_id = @family_id and revoked.revoked_at is not null
    ) as revoked
from (
    select family_id, issued_at from refresh_tokens
    where family_id >= @family_id
    order by family_id, id
    limit 1
) as first_token
where first_token.family_id = @family_id;

-- name: EndedRefreshFamilies :many
-- Up to @family_limit sessions (families) after @after_family that are over: every token expired more
-- than @grace_s ago (an access token issued with the last one may still be live, and revoking the
-- user's sessions must find its family). A live family keeps its spent tokens, which reuse detection
-- needs. One pass over refresh_tokens_family_order_idx, each family's tokens read once: "no token of
-- the family is live" checked once per token read the whole family for each of its tokens (a session
-- of K tokens cost K^2; one of 20,000 took 72 s). An ended session can never rotate again, so its
-- tokens are purged by family afterwards (PurgeEndedFamilyTokens) without checking again.
select r.family_id
from refresh_tokens r
where r.family_id > @after_family::uuid
group by r.family_id
having max(r.expires_at) < now() - make_interval(secs => @grace_s::float8)
order by r.family_id
limit @family_limit::integer;

-- name: PurgeEndedFamilyTokens :execrows
-- One chunk of the tokens of ended sessions (EndedRefreshFamilies), by ctid (CONVENTIONS.md, "A
-- chunked delete"). Rows a revocation holds are skipped (a later run deletes them): the purge takes
-- no family's lock, so it must never wait for a token row while holding other families' rows.
delete from refresh_tokens doomed
where doomed.ctid = any(array(
    select t.ctid from refresh_tokens t
    where t.family_id = any(@family_ids::uuid[])
    limit @chunk_size::integer
    for update skip locked
));

-- name: CountSignupsBetween :one
-- Accounts created in [since, until) (the daily monitoring report).
select count(*)::bigint as signups from users where created_at >= @since and created_at < @until;

-- name: EraseUser :one
-- The account's personal data replaced, its address freed for a new registration: the address becomes
-- `erased:<id>`, which no address the API takes can be (no `@`: nobody can register it first and make
-- the erasure fail on the unique index), the name "Deleted user", the password a hash of a secret
-- nobody knows; inactive from now on. Once only: an erased account is no row.
update users
set email = 'erased:' || id, display_name = 'Deleted user',
    password_hash = @password_hash, is_active = false, erased_at = now(), updated_at = now()
where id = @id and erased_at is null
returning *;
