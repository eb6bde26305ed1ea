-- migrate:up
-- When the snapshot cron last tried each tracked login (app/domains/github). The cron takes the due
-- logins longest untried first, so a login that fails every time (gone from GitHub, blocked) moves to
-- the back of the line instead of taking a place in every batch ahead of logins that would succeed.
-- Scheduling state only: rows of logins nobody tracks any more are pruned by the cron.
create table github_snapshot_attempts (
    login text primary key
        check (login ~ '^[a-z0-9]+(-[a-z0-9]+)*$' and length(login) <= 39),
    attempted_at timestamptz not null
);

-- migrate:down
drop table github_snapshot_attempts;
