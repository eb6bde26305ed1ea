-- migrate:up
-- The hourly rollups keep their views and visitors per quarter hour too, so that a time series in a
-- zone whose offset is not a whole number of hours (Asia/Kolkata +05:30, Asia/Kathmandu +05:45,
-- America/St_Johns -03:30, Australia/Adelaide +09:30/+10:30) is read from the rollups: no UTC hour lies
-- inside one of its local hours, so every rolled view of the period was read raw (31 days of a site
-- with some 35,000 views a day ran into the statement timeout). Every zone's offset is a multiple of
-- 15 minutes, so every bucket of a report (a local hour or day) starts on a UTC quarter hour.
--
-- pageviews_00 .. pageviews_45: the views (bots excluded) whose ts lies in minutes 00-14, 15-29, 30-44
-- and 45-59 of the hour; seen_quarters: a visitor's quarters of the hour, bit n for minutes 15n to
-- 15n+14. Null for the hours rolled up before this release: such an hour is read raw when no bucket
-- holds it whole, as before. The previous release's rollup (during the deploy, or after a rollback of
-- the code alone) adds late views to pageviews only: the trigger below then forgets the hour's
-- quarters, so it is read raw from then on, neither with stale quarters nor refused (a refused run
-- would fail on the same window forever, and the watermark would stop).
set local lock_timeout = '3s';
alter table page_view_hourly
    add column pageviews_00 bigint,
    add column pageviews_15 bigint,
    add column pageviews_30 bigint,
    add column pageviews_45 bigint,
    add constraint page_view_hourly_quarters check (
        num_nulls(pageviews_00, pageviews_15, pageviews_30, pageviews_45) = 4
        or (
            num_nulls(pageviews_00, pageviews_15, pageviews_30, pageviews_45) = 0
            and least(pageviews_00, pageviews_15, pageviews_30, pageviews_45) >= 0
            and pageviews_00 + pageviews_15 + pageviews_30 + pageviews_45 = pageviews
        )
    ) not valid;
alter table page_view_hourly_visitors
    add column seen_quarters smallint,
    add constraint page_view_hourly_visitors_seen_quarters check (seen_quarters between 1 and 15) not valid;

create function page_view_hourly_forget_stale_quarters() returns trigger
language plpgsql as $$
begin
    if new.pageviews <> old.pageviews
        and (new.pageviews_00, new.pageviews_15, new.pageviews_30, new.pageviews_45)
            is not distinct from (old.pageviews_00, old.pageviews_15, old.pageviews_30, old.pageviews_45)
    then
        new.pageviews_00 := null;
        new.pageviews_15 := null;
        new.pageviews_30 := null;
        new.pageviews_45 := null;
    end if;
    return new;
end
$$;

create trigger page_view_hourly_forget_stale_quarters before update on page_view_hourly
for each row execute function page_view_hourly_forget_stale_quarters();

-- The quarter of its UTC hour that `at` lies in: 0 for minutes 00-14 .. 3 for 45-59.
create function analytics_quarter_of_hour(at timestamptz) returns integer
language sql immutable parallel safe as $$
    select extract(minute from at at time zone 'UTC')::integer / 15
$$;

-- Whether a time series counts the rolled views of `hour` from its quarters (`pageviews_00` is null
-- for an hour without them): the hour lies inside no single bucket of `unit` in `tz`, and the range's
-- ends fall on UTC quarter hours (local midnights do, in every zone). The one rule for both halves of a
-- series: ReportTimeseries reads these hours' quarters, analytics_raw_views(..., true) skips their rows.
create function analytics_hour_from_quarters(
    pageviews_00 bigint, hour timestamptz, range_from timestamptz, range_to timestamptz, unit text, tz text
) returns boolean
language sql stable as $$
    select pageviews_00 is not null
        and date_bin('15 minutes', range_from, timestamptz '2000-01-01 00:00+00') = range_from
        and date_bin('15 minutes', range_to, timestamptz '2000-01-01 00:00+00') = range_to
        and not analytics_hour_is_whole(hour, range_from, range_to, unit, tz)
$$;

-- The raw rows a report reads: those not rolled up yet, and the rolled ones of the UTC hours that lie
-- inside no single bucket of `unit` in `tz` (analytics_hour_is_whole), except, with `skip_quartered`
-- (a time series), those it counts from their quarters (analytics_hour_from_quarters).
create function analytics_raw_views(
    site bigint, range_from timestamptz, range_to timestamptz, unit text, tz text, skip_quartered boolean
) returns setof page_views
language sql stable as $$
    select p.* from page_views p
    where p.site_id = site and p.received_at >= analytics_watermark()
        and p.ts >= analytics_watermark() - interval '24 hours'
        and p.ts >= range_from and p.ts < range_to
    union all
    select p.*
    from generate_series(date_trunc('hour', range_from, 'UTC'), range_to - interval '1 microsecond', interval '1 hour')
        as h (hour)
    cross join lateral (
        select q.* from page_views q
        where q.site_id = site and q.received_at < analytics_watermark()
            and q.ts >= greatest(h.hour, range_from) and q.ts < least(h.hour + interval '1 hour', range_to)
        offset 0  -- not flattened: one index range scan per such hour, never a scan of the whole range
    ) p
    where not analytics_hour_is_whole(h.hour, range_from, range_to, unit, tz)
        and not (
            skip_quartered
            and exists (
                select from page_view_hourly d
                where d.site_id = site and d.hour = h.hour
                    and analytics_hour_from_quarters(d.pageviews_00, d.hour, range_from, range_to, unit, tz)
            )
        )
$$;

-- The summary's and the breakdowns' raw rows, as before (the previous release calls it too).
create or replace function analytics_raw_views(
    site bigint, range_from timestamptz, range_to timestamptz, unit text, tz text
) returns setof page_views
language sql stable as $$
    select * from analytics_raw_views(site, range_from, range_to, unit, tz, false)
$$;

-- migrate:down
set local lock_timeout = '3s';
create or replace function analytics_raw_views(
    site bigint, range_from timestamptz, range_to timestamptz, unit text, tz text
) returns setof page_views
language sql stable as $$
    select p.* from page_views p
    where p.site_id = site and p.received_at >= analytics_watermark()
        and p.ts >= analytics_watermark() - interval '24 hours'
        and p.ts >= range_from and p.ts < range_to
    union all
    select p.*
    from generate_series(date_trunc('hour', range_from, 'UTC'), range_to - interval '1 microsecond', interval '1 hour')
        as h (hour)
    cross join lateral (
        select q.* from page_views q
        where q.site_id = site and q.received_at < analytics_watermark()
            and q.ts >= greatest(h.hour, range_from) and q.ts < least(h.hour + interval '1 hour', range_to)
        offset 0
    ) p
    where not analytics_hour_is_whole(h.hour, range_from, range_to, unit, tz)
$$;
drop function analytics_raw_views(bigint, timestamptz, timestamptz, text, text, boolean);
drop function analytics_hour_from_quarters(bigint, timestamptz, timestamptz, timestamptz, text, text);
drop function analytics_quarter_of_hour(timestamptz);
drop trigger page_view_hourly_forget_stale_quarters on page_view_hourly;
drop function page_view_hourly_forget_stale_quarters();
alter table page_view_hourly_visitors drop column seen_quarters;
alter table page_view_hourly
    drop column pageviews_00,
    drop column pageviews_15,
    drop column pageviews_30,
    drop column pageviews_45;
