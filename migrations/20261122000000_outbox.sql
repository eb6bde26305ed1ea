-- migrate:up
-- The transactional outbox: a service that must trigger background work inserts a row here in the
-- same transaction as its change; the relay in workers/relay.py moves committed rows to SAQ.
create table outbox (
    id bigint generated always as identity primary key,
    queue text not null check (queue in ('orders', 'feed', 'default')),
    task text not null check (length(task) between 1 and 200),
    payload jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    published_at timestamptz
);

create index outbox_unpublished_idx on outbox (id) where published_at is null;

-- migrate:down
drop table outbox;
