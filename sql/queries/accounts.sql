-- name: CreateUser :one
insert into users (email, display_name, password_hash, role)
values (@email, @display_name, @password_hash, @role)
on conflict (email) do nothing
returning *;

-- name: GetUserByEmail :one
select * from users where email = @email;

-- name: GetUserById :one
select * from users where id = @id;

-- name: UpdateUserPasswordHash :exec
update users set password_hash = @password_hash, updated_at = now() where id = @id;

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

-- name: GetRefreshTokenForUpdate :one
select * from refresh_tokens where token_hash = @token_hash for update;

-- name: MarkRefreshTokenUsed :exec
update refresh_tokens set used_at = now() where id = @id;

-- name: RevokeRefreshFamily :execrows
update refresh_tokens set revoked_at = now() where family_id = @family_id and revoked_at is null;

-- name: RevokeUserRefreshFamilies :many
-- Revokes every live refresh token of a user except one family (nil uuid: none); returns the families.
update refresh_tokens set revoked_at = now()
where user_id = @user_id and revoked_at is null and family_id <> @keep_family_id
returning family_id;

-- name: IsFamilyRevoked :one
-- The database answer when the Valkey deny-list cannot be read.
select exists (
    select 1 from refresh_tokens where family_id = @family_id and revoked_at is not null
) as revoked;
