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

-- name: PurgeEventIds :execrows
-- Served by a BRIN index on seen_at (rows are appended in seen_at order).
delete from page_view_event_ids where seen_at < @before;

-- name: InsertPageView :exec
-- One row per statement: only the load-test harness's naive baseline uses it (the sink COPYs).
insert into page_views (site_id, ts, received_at, event_id, visitor_id, path, title, referrer_host,
                        referrer_source, utm_source, utm_medium, utm_campaign, screen_width, device, browser,
                        os, is_bot)
values (@site_id, @ts, @received_at, sqlc.narg(event_id), @visitor_id, @path, @title, @referrer_host,
        @referrer_source, @utm_source, @utm_medium, @utm_campaign, sqlc.narg(screen_width), @device, @browser,
        @os, @is_bot);

-- name: DeletedSitesBefore :many
-- Deleted sites whose raw data is to be purged (deleted before @before: nothing of theirs is still
-- being written).
select site_id from deleted_sites where deleted_at < @before order by site_id;

-- name: PurgeSitePageViews :execrows
-- One day of a deleted site's raw page views (one partition: a bounded statement).
delete from page_views where site_id = @site_id and ts >= @from_ts and ts < @to_ts;

-- name: PurgeSiteEventIds :execrows
delete from page_view_event_ids where site_id = @site_id;

-- name: ForgetDeletedSites :execrows
-- Tombstones whose data is gone and which no process needs any more (older than @before).
delete from deleted_sites where site_id = any(@site_ids::bigint[]) and deleted_at < @before;
