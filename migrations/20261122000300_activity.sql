-- migrate:up
-- Domain events as the activity feed consumes them: one row per outbox event (outbox_id makes the
-- consumer idempotent under at-least-once delivery).
create table activity_events (
    id bigint generated always as identity primary key,
    outbox_id bigint not null unique,
    actor_id bigint not null references users (id) on delete cascade,
    verb text not null check (length(verb) between 1 and 100),
    object_type text not null,
    object_id bigint not null,
    project_id bigint references projects (id) on delete cascade,
    data jsonb not null default '{}'::jsonb,
    occurred_at timestamptz not null
);

create index activity_events_project_idx on activity_events (project_id, occurred_at desc, id desc);
create index activity_events_actor_idx on activity_events (actor_id, occurred_at desc, id desc);

-- migrate:down
drop table activity_events;
