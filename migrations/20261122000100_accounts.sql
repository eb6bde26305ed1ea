-- migrate:up
create type user_role as enum ('admin', 'member');

create table users (
    id bigint generated always as identity primary key,
    email text not null check (length(email) between 3 and 320 and email = lower(email)),
    display_name text not null check (length(display_name) between 1 and 100),
    password_hash text not null,
    role user_role not null default 'member',
    is_active boolean not null default true,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create unique index users_email_key on users (email);
create index users_role_active_idx on users (role, is_active, id);

-- Refresh tokens are opaque random secrets stored only as a SHA-256 hash. Every use rotates the
-- token within its family; presenting an already-used token revokes the whole family.
create table refresh_tokens (
    id bigint generated always as identity primary key,
    user_id bigint not null references users (id) on delete cascade,
    family_id uuid not null,
    token_hash bytea not null unique,
    issued_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz,
    revoked_at timestamptz
);

create index refresh_tokens_family_idx on refresh_tokens (family_id);
create index refresh_tokens_live_user_idx on refresh_tokens (user_id) where revoked_at is null;

-- migrate:down
drop table refresh_tokens;
drop table users;
drop type user_role;
