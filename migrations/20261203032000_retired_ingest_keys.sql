-- migrate:up
-- Ingest keys taken out of service by a rotation (POST /api/sites/{site_id}/ingest-key), and when.
-- The trigger below records the old key and NOTIFYs it on `deleted_sites`, the channel every API
-- process's mirror of refused keys listens on (as a deleted site's key), in the rotating
-- transaction: from its commit on every process refuses the old key, however long it had it cached;
-- a process that (re)connects its listener loads the recent ones from here. A table of its own, not
-- `deleted_sites`: the daily purge deletes the raw data of every site listed there, and a rotated
-- site is alive. The rotating service forgets the rows no process needs any more (older than it
-- keeps a refusal in memory). Creating the trigger locks `sites` against writes for an instant.
set local lock_timeout = '3s';

create table retired_ingest_keys (
    ingest_key text primary key,
    site_id bigint not null,
    retired_at timestamptz not null default now()
);

create function record_retired_ingest_key() returns trigger
language plpgsql as $$
begin
    insert into retired_ingest_keys (ingest_key, site_id) values (old.ingest_key, old.id)
    on conflict (ingest_key) do update set retired_at = now();
    perform pg_notify('deleted_sites', old.ingest_key);
    return null;
end;
$$;

create trigger sites_record_retired_key
after update of ingest_key on sites
for each row when (old.ingest_key is distinct from new.ingest_key)
execute function record_retired_ingest_key();

-- migrate:down
set local lock_timeout = '3s';
drop trigger sites_record_retired_key on sites;
drop function record_retired_ingest_key();
drop table retired_ingest_keys;
