-- migrate:up

-- The rows received at or after a bound (the watermark: the reports' raw tail and the visits not
-- rolled up yet) were picked by received_at alone, so every daily partition of page_views (partitioned
-- by ts) was searched, through its BRIN index, for the whole retention. The ingest clamps ts to at
-- most 24 hours before received_at (derive.MAX_AGE, against the same clock reading), so a row received
-- at or after the bound has ts at or after the bound minus 24 hours: saying so prunes the partitions to
-- the last day or two and changes no answer. Same signatures: the previous release keeps working.

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
        offset 0  -- not flattened: one index range scan per such hour, never a scan of the whole range
    ) p
    where not analytics_hour_is_whole(h.hour, range_from, range_to, unit, tz)
$$;

create or replace function analytics_merged_visits(only_site bigint, received_from timestamptz, received_to timestamptz)
returns setof page_view_visits
language sql stable as $$
    with pending as materialized (
        select p.site_id, p.visitor_id, p.ts, p.path from page_views p
        where only_site is not null and p.site_id = only_site
            and p.received_at >= received_from and p.received_at < received_to and not p.is_bot
            and p.ts >= received_from - interval '24 hours'
        union all
        select p.site_id, p.visitor_id, p.ts, p.path from page_views p join sites s on s.id = p.site_id
        where only_site is null
            and p.received_at >= received_from and p.received_at < received_to and not p.is_bot
            and p.ts >= received_from - interval '24 hours'
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

-- migrate:down

create or replace function analytics_raw_views(
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

create or replace function analytics_merged_visits(only_site bigint, received_from timestamptz, received_to timestamptz)
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
