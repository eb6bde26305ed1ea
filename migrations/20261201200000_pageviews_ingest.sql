-- migrate:up

-- Claimed event ids: the sink now claims them with a binary COPY (a unique violation, i.e. a retried
-- send, falls back to INSERT ... ON CONFLICT DO NOTHING). The B-tree on seen_at cost every claim a
-- second random index insert, for a daily purge only: a BRIN index serves that purge (rows are
-- appended in seen_at order) at next to no cost per insert.
drop index page_view_event_ids_seen_idx;
create index page_view_event_ids_seen_brin on page_view_event_ids using brin (seen_at);

-- Sites deleted, and when: every API process mirrors the keys of the recent ones in memory (kept
-- current by the NOTIFY below, sent in the deleting transaction and delivered when, and only if, it
-- commits) so that a deleted site's key stops ingesting in every process at once; a daily job
-- deletes the raw page views and claimed event ids of each deleted site, then its row here. The
-- trigger fires for every way a site goes (DELETE /api/sites/{id}, its owner's account deleted by
-- cascade). Keys, not ids, are what the processes remember: a key is never issued twice.
create table deleted_sites (
    site_id bigint primary key,
    ingest_key text not null,
    deleted_at timestamptz not null default now()
);

create index deleted_sites_deleted_at_idx on deleted_sites (deleted_at);

create function record_deleted_site() returns trigger
language plpgsql as $$
begin
    insert into deleted_sites (site_id, ingest_key) values (old.id, old.ingest_key)
    on conflict (site_id) do update set ingest_key = excluded.ingest_key, deleted_at = now();
    perform pg_notify('deleted_sites', old.ingest_key);
    return null;
end;
$$;

create trigger sites_record_deleted
after delete on sites
for each row execute function record_deleted_site();

-- migrate:down
drop trigger sites_record_deleted on sites;
drop function record_deleted_site();
drop table deleted_sites;
drop index page_view_event_ids_seen_brin;
create index page_view_event_ids_seen_idx on page_view_event_ids (seen_at);
