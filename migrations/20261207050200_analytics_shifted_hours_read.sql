-- migrate:up
-- Reports read the counts of 20261207050000, now that 20261207050100 has filled them for every day
-- rolled up before the upgrade (until then the previous body, per visitor, stayed exact: read earlier,
-- the counts of the days not filled yet answered too few visitors, through the deploy and the fill).
set local lock_timeout = '3s';

-- The distinct visitors (bots excluded) of each bucket [starts[i], starts[i + 1]) of a report, as in
-- 20261206230000, and now an hour off the hour (a zone with a fractional offset) from its quarter's
-- hour_visitors: a part is read per visitor only where it is none of the counted shapes (a cut in an
-- hour rolled up without quarters, a local hour of 30 minutes).
create or replace function analytics_bucket_visitors(site bigint, starts timestamptz[], range_to timestamptz)
returns table (bucket_start timestamptz, visitors bigint)
language sql stable as $$
    with buckets as (
        select s.start, coalesce(lead(s.start) over (order by s.start), range_to) as finish
        from unnest(starts) as s (start)
    ),
    parts as materialized (
        select b.start, d.day, p.part_from, p.part_to,
            case
                when p.part_from = date_trunc('hour', p.part_from, 'UTC')
                    and p.part_to = p.part_from + interval '1 hour' then 'hour'
                when p.part_from = d.day and analytics_cut_from_counts(site, p.part_to) then 'before'
                when p.part_to = d.day + interval '24 hours' and analytics_cut_from_counts(site, p.part_from)
                    then 'after'
                when p.part_to = p.part_from + interval '1 hour' and p.part_from = analytics_quarter_start(p.part_from)
                    and not exists (  -- both UTC hours it lies across have their quarters
                        select 1 from page_view_hourly h
                        where h.site_id = site and h.hour >= date_trunc('hour', p.part_from, 'UTC')
                            and h.hour <= date_trunc('hour', p.part_from, 'UTC') + interval '1 hour'
                            and h.pageviews_00 is null
                    ) then 'shifted'
                else 'rows'
            end as kind
        from buckets b
        cross join lateral generate_series(
            date_trunc('day', b.start, 'UTC'), b.finish - interval '1 microsecond', interval '24 hours'
        ) as d (day)
        cross join lateral (
            select greatest(b.start, d.day) as part_from, least(b.finish, d.day + interval '24 hours') as part_to
        ) p
    ),
    pending as materialized (  -- each visitor once per part: joined on equality, never on a range per part
        select distinct p.visitor_id, starts[width_bucket(p.ts, starts)] as start,
            date_trunc('day', p.ts, 'UTC') as day
        from page_views p
        where p.site_id = site and p.received_at >= (select analytics_watermark())
            and p.ts >= (select analytics_watermark()) - interval '24 hours'
            and p.ts >= starts[1] and p.ts < range_to and not p.is_bot
    ),
    counted as (
        select c.start, case c.kind
            when 'hour' then (
                select coalesce(sum(h.visitors), 0) from page_view_hourly h
                where h.site_id = site and h.hour = c.part_from
            )
            when 'shifted' then (
                select coalesce(sum(q.hour_visitors), 0) from page_view_quarters q
                where q.site_id = site and q.quarter = c.part_from
            )
            else (
                select coalesce(sum(case c.kind when 'before' then q.visitors_first else q.visitors_last end), 0)
                from page_view_quarters q
                where q.site_id = site and q.quarter >= c.part_from and q.quarter < c.part_to
            )
        end as visitors
        from parts c
        where c.kind <> 'rows'
    ),
    fresh as (
        select c.start, count(distinct n.visitor_id) as visitors
        from parts c
        join pending n on n.start = c.start and n.day = c.day
        cross join lateral (
            select case c.kind
                when 'hour' then exists (
                    select 1 from page_view_hourly_visitors v
                    where v.site_id = site and v.hour = c.part_from and v.visitor_id = n.visitor_id
                )
                when 'shifted' then exists (
                    select 1 from page_view_daily_visitors d
                    where d.site_id = site and d.day = c.day and d.visitor_id = n.visitor_id
                        and analytics_seen_in_hour(d.quarters, analytics_quarter_of_day(c.part_from))
                )
                else exists (
                    select 1 from page_view_daily_visitors d
                    where d.site_id = site and d.day = c.day and d.visitor_id = n.visitor_id
                        and case c.kind
                            when 'before' then d.day + d.first_quarter * interval '15 minutes' < c.part_to
                            else d.day + d.last_quarter * interval '15 minutes' >= c.part_from
                        end
                )
            end as counted
            offset 0  -- not flattened: a primary-key probe per visitor and part, never an anti join
        ) k
        where c.kind <> 'rows' and not k.counted
        group by c.start, c.part_from
    ),
    cut_hours as materialized (
        select c.start, c.part_from, c.part_to, h.hour,
            c.part_from = analytics_quarter_start(c.part_from) and c.part_to = analytics_quarter_start(c.part_to)
                and analytics_hour_has_quarters(site, h.hour) as quartered,
            (
                select coalesce(sum(1 << q.n), 0) from generate_series(0, 3) as q (n)
                where h.hour + q.n * interval '15 minutes' >= c.part_from
                    and h.hour + q.n * interval '15 minutes' < c.part_to
            )::integer as mask
        from parts c
        cross join lateral generate_series(
            date_trunc('hour', c.part_from, 'UTC'), c.part_to - interval '1 microsecond', interval '1 hour'
        ) as h (hour)
        where c.kind = 'rows' and not (h.hour >= c.part_from and h.hour + interval '1 hour' <= c.part_to)
    ),
    per_visitor as (
        select x.start, count(distinct x.visitor_id) as visitors
        from (
            select c.start, c.part_from, v.visitor_id
            from parts c
            cross join lateral (
                select v.visitor_id from page_view_hourly_visitors v  -- both bounds on hour: the index's range
                where v.site_id = site and v.hour >= c.part_from and v.hour <= c.part_to - interval '1 hour'
                offset 0  -- not flattened: the part's hours only, never the range's rows before the parts
            ) v
            where c.kind = 'rows'
            union all
            select k.start, k.part_from, v.visitor_id
            from cut_hours k
            cross join lateral (
                select v.visitor_id from page_view_hourly_visitors v
                where v.site_id = site and v.hour = k.hour and v.seen_quarters & k.mask <> 0
                offset 0  -- not flattened: nothing read when no hour is cut, as in any zone but a few
            ) v
            where k.quartered
            union all
            select k.start, k.part_from, p.visitor_id
            from cut_hours k
            cross join lateral (
                select r.visitor_id from page_views r
                where r.site_id = site and r.received_at < (select analytics_watermark()) and not r.is_bot
                    and r.ts >= greatest(k.hour, k.part_from) and r.ts < least(k.hour + interval '1 hour', k.part_to)
                offset 0  -- not flattened: one index range scan per such hour
            ) p
            where not k.quartered
            union all
            select c.start, c.part_from, n.visitor_id
            from parts c
            join pending n on n.start = c.start and n.day = c.day
            where c.kind = 'rows'
        ) x
        group by x.start, x.part_from
    )
    select b.start, coalesce(sum(x.visitors), 0)::bigint
    from buckets b
    left join (
        select start, visitors from counted
        union all
        select start, visitors from fresh
        union all
        select start, visitors from per_visitor
    ) x on x.start = b.start
    group by b.start
$$;

-- migrate:down
set local lock_timeout = '3s';

create or replace function analytics_bucket_visitors(site bigint, starts timestamptz[], range_to timestamptz)
returns table (bucket_start timestamptz, visitors bigint)
language sql stable as $$
    with buckets as (
        select s.start, coalesce(lead(s.start) over (order by s.start), range_to) as finish
        from unnest(starts) as s (start)
    ),
    parts as materialized (
        select b.start, d.day, p.part_from, p.part_to,
            case
                when p.part_from = date_trunc('hour', p.part_from, 'UTC')
                    and p.part_to = p.part_from + interval '1 hour' then 'hour'
                when p.part_from = d.day and analytics_cut_from_counts(site, p.part_to) then 'before'
                when p.part_to = d.day + interval '24 hours' and analytics_cut_from_counts(site, p.part_from)
                    then 'after'
                else 'rows'
            end as kind
        from buckets b
        cross join lateral generate_series(
            date_trunc('day', b.start, 'UTC'), b.finish - interval '1 microsecond', interval '24 hours'
        ) as d (day)
        cross join lateral (
            select greatest(b.start, d.day) as part_from, least(b.finish, d.day + interval '24 hours') as part_to
        ) p
    ),
    pending as materialized (  -- each visitor once per part: joined on equality, never on a range per part
        select distinct p.visitor_id, starts[width_bucket(p.ts, starts)] as start,
            date_trunc('day', p.ts, 'UTC') as day
        from page_views p
        where p.site_id = site and p.received_at >= (select analytics_watermark())
            and p.ts >= (select analytics_watermark()) - interval '24 hours'
            and p.ts >= starts[1] and p.ts < range_to and not p.is_bot
    ),
    counted as (
        select c.start, case c.kind
            when 'hour' then (
                select coalesce(sum(h.visitors), 0) from page_view_hourly h
                where h.site_id = site and h.hour = c.part_from
            )
            else (
                select coalesce(sum(case c.kind when 'before' then q.visitors_first else q.visitors_last end), 0)
                from page_view_quarters q
                where q.site_id = site and q.quarter >= c.part_from and q.quarter < c.part_to
            )
        end as visitors
        from parts c
        where c.kind <> 'rows'
    ),
    fresh as (
        select c.start, count(distinct n.visitor_id) as visitors
        from parts c
        join pending n on n.start = c.start and n.day = c.day
        cross join lateral (
            select case c.kind
                when 'hour' then exists (
                    select 1 from page_view_hourly_visitors v
                    where v.site_id = site and v.hour = c.part_from and v.visitor_id = n.visitor_id
                )
                else exists (
                    select 1 from page_view_daily_visitors d
                    where d.site_id = site and d.day = c.day and d.visitor_id = n.visitor_id
                        and case c.kind
                            when 'before' then d.day + d.first_quarter * interval '15 minutes' < c.part_to
                            else d.day + d.last_quarter * interval '15 minutes' >= c.part_from
                        end
                )
            end as counted
            offset 0  -- not flattened: a primary-key probe per visitor and part, never an anti join
        ) k
        where c.kind <> 'rows' and not k.counted
        group by c.start, c.part_from
    ),
    cut_hours as materialized (
        select c.start, c.part_from, c.part_to, h.hour,
            c.part_from = analytics_quarter_start(c.part_from) and c.part_to = analytics_quarter_start(c.part_to)
                and analytics_hour_has_quarters(site, h.hour) as quartered,
            (
                select coalesce(sum(1 << q.n), 0) from generate_series(0, 3) as q (n)
                where h.hour + q.n * interval '15 minutes' >= c.part_from
                    and h.hour + q.n * interval '15 minutes' < c.part_to
            )::integer as mask
        from parts c
        cross join lateral generate_series(
            date_trunc('hour', c.part_from, 'UTC'), c.part_to - interval '1 microsecond', interval '1 hour'
        ) as h (hour)
        where c.kind = 'rows' and not (h.hour >= c.part_from and h.hour + interval '1 hour' <= c.part_to)
    ),
    per_visitor as (
        select x.start, count(distinct x.visitor_id) as visitors
        from (
            select c.start, c.part_from, v.visitor_id
            from parts c
            join page_view_hourly_visitors v  -- both bounds on hour itself: the index's range
                on v.site_id = site and v.hour >= c.part_from and v.hour <= c.part_to - interval '1 hour'
            where c.kind = 'rows'
            union all
            select k.start, k.part_from, v.visitor_id
            from cut_hours k
            join page_view_hourly_visitors v on v.site_id = site and v.hour = k.hour
                and v.hour >= starts[1] - interval '1 hour' and v.hour < range_to  -- the range's rows only
            where k.quartered and v.seen_quarters & k.mask <> 0
            union all
            select k.start, k.part_from, p.visitor_id
            from cut_hours k
            cross join lateral (
                select r.visitor_id from page_views r
                where r.site_id = site and r.received_at < (select analytics_watermark()) and not r.is_bot
                    and r.ts >= greatest(k.hour, k.part_from) and r.ts < least(k.hour + interval '1 hour', k.part_to)
                offset 0  -- not flattened: one index range scan per such hour
            ) p
            where not k.quartered
            union all
            select c.start, c.part_from, n.visitor_id
            from parts c
            join pending n on n.start = c.start and n.day = c.day
            where c.kind = 'rows'
        ) x
        group by x.start, x.part_from
    )
    select b.start, coalesce(sum(x.visitors), 0)::bigint
    from buckets b
    left join (
        select start, visitors from counted
        union all
        select start, visitors from fresh
        union all
        select start, visitors from per_visitor
    ) x on x.start = b.start
    group by b.start
$$;
