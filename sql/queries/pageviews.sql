-- name: GetSalt :one
select salt from analytics_salts where day = @day;

-- name: InsertSalt :exec
insert into analytics_salts (day, salt) values (@day, @salt) on conflict (day) do nothing;

-- name: DeleteOldSalts :execrows
delete from analytics_salts where day < @before;

-- name: EnsurePartitions :one
select ensure_page_view_partitions(@from_day::date, @days::integer)::integer as created;

-- name: DropPageViewPartitions :one
-- Drops the daily partitions that end on or before @before; busy:
-- those left for the next run (their lock was not free in time).
select d.dropped::integer as dropped, d.busy::integer as busy
from drop_page_view_partitions(@before::date) d;

-- name: EventIdPages :one
-- The pages of page_view_event_ids now: the purge sweeps them.
select (pg_relation_size('page_view_event_ids')
        / current_setting('block_size')::bigint)::bigint as pages;

-- name: PurgeEventIds :execrows
-- One bounded chunk: the ids seen before @before on the pages
-- [@from_page, @to_page) only (a Tid Range Scan of those pages,
-- whatever order the rows were stored in).
delete from page_view_event_ids
where ctid >= format('(%s,0)', @from_page::bigint)::tid
  and ctid < format('(%s,0)', @to_page::bigint)::tid
  and seen_at < @before;

-- name: InsertPageView :exec
-- One row per statement: only the load-test harness's naive baseline uses it (the sink COPYs).
insert into page_views (site_id, ts, received_at, event_id, visitor_id, path, referrer_host,
                        referrer_source, utm_source, utm_medium, utm_campaign, screen_width, device, browser,
                        os, is_bot)
values (@site_id, @ts, @received_at, sqlc.narg(event_id), @visitor_id, @path, @referrer_host,
        @referrer_source, @utm_source, @utm_medium, @utm_campaign, sqlc.narg(screen_width), @device, @browser,
        @os, @is_bot);

-- name: DeletedSitesBefore :many
-- Deleted sites whose raw data is to be purged (deleted before @before: nothing of theirs is still
-- being written).
select site_id from deleted_sites where deleted_at < @before order by site_id;

-- name: PageViewPartitionDays :many
-- The days page_views has a partition for, oldest first: a deleted site's purge walks these (what
-- maintain_partitions keeps, a few days ahead included), not every day a retention could hold
-- (ANALYTICS_RETENTION_DAYS, up to 3,660: one transaction each, nearly all with nothing to do).
select to_date(substr(c.relname::text, 12), 'YYYYMMDD')::date as day
from pg_catalog.pg_inherits i
join pg_catalog.pg_class c on c.oid = i.inhrelid
where i.inhparent = 'page_views'::regclass and c.relname::text ~ '^page_views_[0-9]{8}$'
order by 1;

-- name: SitePageViewChunk :one
-- nullable: first_ts, end_ts
-- The next chunk of a deleted site's raw page views of one day (one partition) from @from_ts on: the
-- ts of its first view, and of the view @skip_rows places after it (none: fewer are left). The caller
-- deletes [@from_ts, end) (PurgeSitePageViews), or the views of the first instant alone when at least
-- @skip_rows + 1 share it: at most @skip_rows views a chunk, or one instant's (a batch's views sent
-- without ts share the server's: up to 1,000). Both read page_views_site_ts_idx from @from_ts only.
select
    (select min(v.ts) from page_views v
     where v.site_id = @site_id and v.ts >= @from_ts and v.ts < @to_ts)::timestamptz as first_ts,
    (select v.ts from page_views v
     where v.site_id = @site_id and v.ts >= @from_ts and v.ts < @to_ts
     order by v.ts offset @skip_rows::integer limit 1)::timestamptz as end_ts;

-- name: PurgeSitePageViews :execrows
-- A chunk of a deleted site's raw page views: those of [@from_ts, @to_ts) (SitePageViewChunk), a range
-- of page_views_site_ts_idx whose two bounds the index serves; the caller starts the next chunk at
-- @to_ts, one transaction each: no chunk scans the index entries of the views its predecessors
-- deleted. Not by ctid (CONVENTIONS.md, "A chunked delete"): the range that prunes the other
-- partitions is one the index can serve too, and with statistics that had not seen the day's views
-- the planner read the whole day through it, comparing every row with the chunk's ctids. Views never
-- change: no lock.
delete from page_views
where site_id = @site_id and ts >= @from_ts and ts < @to_ts;

-- name: PurgeSiteEventIds :one
-- One chunk of a deleted site's claimed event ids: its first @chunk_rows from @from_id on, in
-- primary-key order. The caller starts the next chunk at last_id, one transaction each, until a
-- chunk comes back short.
with chosen as (
    select first.event_id
    from page_view_event_ids first
    where first.site_id = @site_id and first.event_id >= @from_id
    order by first.event_id
    limit @chunk_rows::integer
), purged as (
    delete from page_view_event_ids doomed
    where doomed.site_id = @site_id and doomed.event_id = any(array(select event_id from chosen))
    returning 1
)
select (select count(*) from purged)::integer as deleted,
       coalesce((select event_id from chosen order by event_id desc limit 1), @from_id)::uuid as last_id;

-- name: ForgetDeletedSites :execrows
-- Tombstones whose data is gone and which no process needs any more (older than @before). The
-- reports' purge finds a deleted site's rollups through its tombstone (DeletedSitesWithRollups): it is
-- kept while any are left.
delete from deleted_sites d
where d.site_id = any(@site_ids::bigint[]) and d.deleted_at < @before
    and not exists (select 1 from page_view_hourly r where r.site_id = d.site_id)
    and not exists (select 1 from page_view_dimension_hourly r where r.site_id = d.site_id)
    and not exists (select 1 from page_view_hourly_visitors r where r.site_id = d.site_id)
    and not exists (select 1 from page_view_visits r where r.site_id = d.site_id)
    and not exists (select 1 from page_view_daily_visitors r where r.site_id = d.site_id)
    and not exists (select 1 from page_view_quarters r where r.site_id = d.site_id)
    and not exists (select 1 from page_view_entry_hourly r where r.site_id = d.site_id);
