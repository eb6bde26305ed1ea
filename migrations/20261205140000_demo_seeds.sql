-- migrate:up
-- The demo seeds `just serve` has run to their end (app/seed.py): each runs once, so demo data a
-- user deleted or renamed (a demo project, the demo site) is not created again at the next start.
create table demo_seeds (
    module text primary key,
    seeded_at timestamptz not null default now()
);

-- migrate:down
drop table demo_seeds;
