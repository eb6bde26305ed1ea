-- name: CreateSite :one
insert into sites (owner_id, domain, ingest_key, timezone)
values (@owner_id, @domain, @ingest_key, @timezone)
returning *;

-- name: GetSite :one
select * from sites where id = @id;

-- name: ListSites :many
select * from sites
where (sqlc.narg(owner_id)::bigint is null or owner_id = sqlc.narg(owner_id)::bigint)
  and id > @after_id
order by id
limit @row_limit;

-- name: DeleteSite :execrows
delete from sites where id = @id;

-- name: SiteKeys :many
-- Every site's ingest key, for the in-process key → site id map of the ingest path.
select id, ingest_key from sites;

-- name: GetSiteByKey :one
select id from sites where ingest_key = @ingest_key;

-- name: GetSalt :one
select salt from analytics_salts where day = @day;

-- name: InsertSalt :exec
insert into analytics_salts (day, salt) values (@day, @salt) on conflict (day) do nothing;

-- name: DeleteOldSalts :execrows
delete from analytics_salts where day < @before;

-- name: EnsurePartitions :one
select ensure_page_view_partitions(@from_day::date, @days::integer)::integer as created;

-- name: PurgeEventIds :execrows
delete from page_view_event_ids where seen_at < @before;

-- name: InsertPageView :exec
-- One row per statement: only the load-test harness's naive baseline uses it (the sink COPYs).
insert into page_views (site_id, ts, received_at, event_id, visitor_id, path, title, referrer_host,
                        referrer_source, utm_source, utm_medium, utm_campaign, screen_width, device, browser,
                        os, is_bot)
values (@site_id, @ts, @received_at, sqlc.narg(event_id), @visitor_id, @path, @title, @referrer_host,
        @referrer_source, @utm_source, @utm_medium, @utm_campaign, sqlc.narg(screen_width), @device, @browser,
        @os, @is_bot);
