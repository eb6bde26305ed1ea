-- migrate:up
-- GitHub profile analytics (app/domains/github). Logins are stored lower-case (GitHub treats them
-- case-insensitively) and checked against GitHub's rule: alphanumerics and single hyphens, no hyphen
-- at either end, at most 39 characters.

-- The last good data fetched for a login: what a request is answered from, and what it falls back
-- to (stale: true) while GitHub is down or rate-limited.
create table github_profiles (
    login text primary key
        check (login ~ '^[a-z0-9]+(-[a-z0-9]+)*$' and length(login) <= 39),
    data jsonb not null,
    fetched_at timestamptz not null
);

-- Logins a user follows over time (bounded per user by GITHUB_MAX_TRACKED_PER_USER).
create table github_tracked (
    id bigint generated always as identity primary key,
    user_id bigint not null references users (id) on delete cascade,
    login text not null
        check (login ~ '^[a-z0-9]+(-[a-z0-9]+)*$' and length(login) <= 39),
    created_at timestamptz not null default now(),
    unique (user_id, login)
);
create index github_tracked_login_idx on github_tracked (login);

-- One row per tracked login and UTC day, written by the snapshot cron (idempotent per day).
create table github_snapshots (
    login text not null
        check (login ~ '^[a-z0-9]+(-[a-z0-9]+)*$' and length(login) <= 39),
    taken_on date not null,
    taken_at timestamptz not null,
    followers bigint not null,
    following bigint not null,
    public_repos bigint not null,
    repos_counted bigint not null,
    total_stars bigint not null,
    total_forks bigint not null,
    language_bytes jsonb not null,
    primary key (login, taken_on)
);

-- migrate:down
drop table github_snapshots;
drop table github_tracked;
drop table github_profiles;
