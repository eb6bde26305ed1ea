-- migrate:up

-- Payment-provider webhook events, stored once: a replayed or redelivered event id changes nothing.
create table payment_events (
    event_id text primary key check (length(event_id) between 1 and 255),
    order_id bigint references orders (id) on delete set null,
    outcome text not null check (length(outcome) between 1 and 100),
    received_at timestamptz not null default now()
);

-- Invitations to a project, by email: the invitee (an account with that email, now or later)
-- accepts or declines; nobody is added to a project by guessing a user id.
create table project_invitations (
    id bigint generated always as identity primary key,
    project_id bigint not null references projects (id) on delete cascade,
    email text not null check (length(email) between 3 and 320 and email = lower(email)),
    role project_role not null check (role <> 'owner'),
    invited_by bigint references users (id) on delete set null,
    created_at timestamptz not null default now(),
    unique (project_id, email)
);

create index project_invitations_email_idx on project_invitations (email, id);

-- Expired refresh tokens are purged by family (a live family keeps its spent tokens for reuse
-- detection): this finds the families whose every token has expired.
create index refresh_tokens_expires_idx on refresh_tokens (expires_at);

-- Per-uploader storage quota (the sum of what a user has uploaded).
create index project_files_uploader_idx on project_files (uploaded_by) include (size_bytes);

-- migrate:down
drop index project_files_uploader_idx;
drop index refresh_tokens_expires_idx;
drop table project_invitations;
drop table payment_events;
