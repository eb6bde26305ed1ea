-- migrate:up

-- Reports read rollups for the rows received before the watermark and the raw rows received at or
-- after it, in one statement (one snapshot), so the two halves never overlap nor leave a gap.
-- One row (or none: then nothing is rolled up yet); moved forward only by the rollup job, which
-- aggregates the rows received in [watermark, new watermark) and moves the watermark in the same
-- transaction: every raw row is added to the rollups exactly once, whatever its `ts`.
create table analytics_rollup_state (
    id boolean primary key default true check (id),
    rolled_up_to timestamptz not null
);

-- Rollups are keyed by the UTC hour of `ts` (not of `received_at`): a late row is added to its hour.
create table page_view_hourly (
    site_id bigint not null references sites (id) on delete cascade,
    hour timestamptz not null,
    pageviews bigint not null check (pageviews >= 0),
    bot_pageviews bigint not null check (bot_pageviews >= 0),
    primary key (site_id, hour)
);

-- Views (bots excluded) per value of one dimension.
create table page_view_dimension_hourly (
    site_id bigint not null references sites (id) on delete cascade,
    dimension text not null check (dimension in ('path', 'referrer_source', 'utm_campaign', 'device', 'browser')),
    hour timestamptz not null,
    value text not null,
    views bigint not null check (views > 0),
    primary key (site_id, dimension, hour, value)
);

-- The distinct (non-bot) visitors of each hour: unique visitors of any range made of whole hours.
create table page_view_hourly_visitors (
    site_id bigint not null references sites (id) on delete cascade,
    hour timestamptz not null,
    visitor_id bigint not null,
    primary key (site_id, hour, visitor_id)
);

-- Visits (bots excluded): a visitor's views with gaps of at most 30 minutes. Built incrementally:
-- new rows merge with the stored visits within 30 minutes of them (see analytics_merged_visits).
create table page_view_visits (
    site_id bigint not null references sites (id) on delete cascade,
    visitor_id bigint not null,
    started_at timestamptz not null,
    last_seen_at timestamptz not null,
    pageviews integer not null check (pageviews >= 1),
    entry_path text not null,
    primary key (site_id, visitor_id, started_at),
    check (last_seen_at >= started_at)
);

create index page_view_visits_started_idx on page_view_visits (site_id, started_at);

-- The rows not rolled up yet (reports' raw tail and the rollup job) are found through a BRIN index:
-- received_at follows the physical order of each partition, and unlike a B-tree on
-- (site_id, received_at) it costs the ingest COPY next to nothing (measured by benchmarks/run.py).
create index page_views_received_brin on page_views using brin (received_at);

create function analytics_watermark() returns timestamptz
language sql stable as $$
    select coalesce((select rolled_up_to from analytics_rollup_state), '-infinity'::timestamptz)
$$;

-- Whether the rollups of the UTC hour starting at `hour` can serve a report over [range_from, range_to)
-- bucketed by `unit` ('hour' or 'day' in time zone `tz`; '' = the whole range): the hour lies inside
-- the range and inside one bucket. It does not for time zones with a fractional offset (Asia/Kolkata)
-- at the range's ends and at bucket boundaries: those hours are read from the raw rows.
create function analytics_hour_is_whole(
    hour timestamptz, range_from timestamptz, range_to timestamptz, unit text, tz text
) returns boolean
language sql stable as $$
    select hour >= range_from and hour + interval '1 hour' <= range_to
        and (unit = '' or date_trunc(unit, hour, tz) = date_trunc(unit, hour + interval '3599.999999 seconds', tz))
$$;

-- The raw rows (bots included) a report over [range_from, range_to) reads: those not rolled up yet,
-- and the rolled-up ones of the hours whose rollups cannot serve it (see analytics_hour_is_whole).
create function analytics_raw_views(
    site bigint, range_from timestamptz, range_to timestamptz, unit text, tz text
) returns setof page_views
language sql stable as $$
    select p.* from page_views p
    where p.site_id = site and p.received_at >= analytics_watermark()
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
$$;

-- Sessionization of the non-bot rows received in [received_from, received_to) (of one site, or of all
-- sites when only_site is null) together with the stored visits within 30 minutes of them: the visits
-- these become. Adding rows can only merge visits, and a stored visit not within 30 minutes of a new
-- row cannot merge with anything, so the result is the same however the rows are split into runs.
-- A visit's entry path is the smallest path among its earliest views (deterministic under ties).
create function analytics_merged_visits(only_site bigint, received_from timestamptz, received_to timestamptz)
returns setof page_view_visits
language sql stable as $$
    with pending as materialized (
        select p.site_id, p.visitor_id, p.ts, p.path from page_views p
        where only_site is not null and p.site_id = only_site
            and p.received_at >= received_from and p.received_at < received_to and not p.is_bot
        union all
        select p.site_id, p.visitor_id, p.ts, p.path from page_views p join sites s on s.id = p.site_id
        where only_site is null
            and p.received_at >= received_from and p.received_at < received_to and not p.is_bot
    ),
    visitors as (
        select distinct n.site_id, n.visitor_id from pending n
    ),
    touched as (
        select v.site_id, v.visitor_id, v.started_at, v.last_seen_at, v.pageviews, v.entry_path
        from visitors k
        join page_view_visits v on v.site_id = k.site_id and v.visitor_id = k.visitor_id
        where exists (
            select 1 from pending n
            where n.site_id = v.site_id and n.visitor_id = v.visitor_id
                and n.ts >= v.started_at - interval '30 minutes' and n.ts <= v.last_seen_at + interval '30 minutes'
        )
    ),
    items as (
        select * from touched
        union all
        select n.site_id, n.visitor_id, n.ts, n.ts, 1, n.path from pending n
    ),
    flagged as (
        select i.*,
            coalesce(
                i.started_at - max(i.last_seen_at) over (
                    partition by i.site_id, i.visitor_id order by i.started_at, i.entry_path
                    groups between unbounded preceding and 1 preceding
                ) > interval '30 minutes',
                true
            )::integer as opens
        from items i
    ),
    numbered as (
        select f.*,
            sum(f.opens) over (partition by f.site_id, f.visitor_id order by f.started_at, f.entry_path) as visit_no
        from flagged f
    )
    select n.site_id, n.visitor_id, min(n.started_at), max(n.last_seen_at), sum(n.pageviews)::integer,
        (array_agg(n.entry_path order by n.started_at, n.entry_path))[1]
    from numbered n
    group by n.site_id, n.visitor_id, n.visit_no
$$;

-- The visits of a site that start in [range_from, range_to): the stored ones merged with the rows
-- not rolled up yet, exactly as the next rollup will merge them.
create function analytics_visits(site bigint, range_from timestamptz, range_to timestamptz)
returns setof page_view_visits
language sql stable as $$
    with merged as materialized (
        select * from analytics_merged_visits(site, analytics_watermark(), 'infinity')
    )
    select m.* from merged m
    where m.started_at >= range_from and m.started_at < range_to
    union all
    select v.* from page_view_visits v
    where v.site_id = site and v.started_at >= range_from and v.started_at < range_to
        and not exists (
            select 1 from merged m
            where m.visitor_id = v.visitor_id and v.started_at >= m.started_at and v.started_at <= m.last_seen_at
        )
$$;

-- Drops the daily partitions of page_views that end on or before `before` (retention).
create function drop_page_view_partitions(before date) returns integer
language plpgsql as $$
declare
    partition record;
    dropped integer := 0;
begin
    for partition in
        select c.relname
        from pg_inherits i
        join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'page_views'::regclass and c.relname ~ '^page_views_[0-9]{8}$'
            and to_date(substr(c.relname, 12), 'YYYYMMDD') + 1 <= before
        order by c.relname
    loop
        execute format('drop table %I', partition.relname);
        dropped := dropped + 1;
    end loop;
    return dropped;
end;
$$;

-- migrate:down
drop function drop_page_view_partitions(date);
drop function analytics_visits(bigint, timestamptz, timestamptz);
drop function analytics_merged_visits(bigint, timestamptz, timestamptz);
drop function analytics_raw_views(bigint, timestamptz, timestamptz, text, text);
drop function analytics_hour_is_whole(timestamptz, timestamptz, timestamptz, text, text);
drop function analytics_watermark();
drop index page_views_received_brin;
drop table page_view_visits;
drop table page_view_hourly_visitors;
drop table page_view_dimension_hourly;
drop table page_view_hourly;
drop table analytics_rollup_state;
