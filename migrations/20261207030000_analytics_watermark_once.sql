-- migrate:up
-- The reports compared each row they read of page_views with analytics_watermark(), a SQL function
-- that reads analytics_rollup_state: a stable function in a filter is evaluated once per row, a query
-- each time. A site's views not rolled up yet are found through (site_id, ts) over the last 24 hours
-- (a late view's ts is at most 24 hours before its receipt), so that query ran once per view the site
-- received that day: at a million views a day 2 s per read and three reads per summary (the raw tail,
-- the pending visitors, the pending visits), 6 s with nothing pending. Each report now takes the
-- watermark once, `(select analytics_watermark())`: an initplan, whose value the filters compare and
-- the partitions are pruned by. The same read took 0.1 s.
--
-- The reports' calls of analytics_merged_visits pass it that way too (PostgreSQL then plans the call
-- on its own, with the bounds as parameters), and for one site the function finds the stored visits a
-- pending view touches by a primary-key probe per view whatever the planner estimates: with
-- statistics taken after a burst of views its join hashed every visit of the site (60,000 views
-- pending: 2.4 s for the entry pages, now 0.3 s). The rollup's call (every site, constant bounds)
-- keeps the planner's join: over a catch-up window of 100,000 views or more its hash join beat the
-- probes, by up to 1.9 times (1M views against 2M stored visits). Same signatures and answers: the
-- previous release keeps working.
set local lock_timeout = '3s';

comment on function analytics_watermark() is
    'The rollups'' watermark, read from analytics_rollup_state: a query per call. Compare with '
    '(select analytics_watermark()), evaluated once per statement; in a filter the call runs once per row.';

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
    touched as (  -- one branch runs: only_site is a constant in the rollup, a parameter in a report
        select v.site_id, v.visitor_id, v.started_at, v.last_seen_at, v.pageviews, v.entry_path
        from pending n
        join page_view_visits v on v.site_id = n.site_id and v.visitor_id = n.visitor_id
            and v.started_at <= n.ts + interval '30 minutes' and v.last_seen_at >= n.ts - interval '30 minutes'
        where only_site is null  -- the rollup: the planner's join (a hash join wins over a large window)
        union
        select v.site_id, v.visitor_id, v.started_at, v.last_seen_at, v.pageviews, v.entry_path
        from pending n
        cross join lateral (
            select v.* from page_view_visits v
            where v.site_id = n.site_id and v.visitor_id = n.visitor_id
                and v.started_at <= n.ts + interval '30 minutes' and v.last_seen_at >= n.ts - interval '30 minutes'
            offset 0  -- not flattened: a primary-key probe per pending view, never a hash of the visits
        ) v
        where only_site is not null
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

create or replace function analytics_raw_views(
    site bigint, range_from timestamptz, range_to timestamptz, unit text, tz text, skip_quartered boolean
) returns setof page_views
language sql stable as $$
    select p.* from page_views p
    where p.site_id = site and p.received_at >= (select analytics_watermark())
        and p.ts >= (select analytics_watermark()) - interval '24 hours'
        and p.ts >= range_from and p.ts < range_to
    union all
    select p.*
    from generate_series(date_trunc('hour', range_from, 'UTC'), range_to - interval '1 microsecond', interval '1 hour')
        as h (hour)
    cross join lateral (
        select q.* from page_views q
        where q.site_id = site and q.received_at < (select analytics_watermark())
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

create or replace function analytics_bucket_visits(site bigint, starts timestamptz[], range_to timestamptz)
returns table (bucket_start timestamptz, visits bigint, bounces bigint, visit_pageviews bigint)
language sql stable as $$
    with buckets as (
        select s.start from unnest(starts) as s (start)
    ),
    merged as materialized (  -- each with its bucket (none before the first): see analytics_bucket_visitors
        select m.visitor_id, m.started_at, m.last_seen_at, m.pageviews,
            starts[width_bucket(m.started_at, starts)] as start
        from analytics_merged_visits(site, (select analytics_watermark()), 'infinity') m
        where m.started_at < range_to
    ),
    replaced as (
        select starts[width_bucket(v.started_at, starts)] as start, v.pageviews from merged m
        cross join lateral (
            select v.started_at, v.pageviews from page_view_visits v
            where v.site_id = site and v.visitor_id = m.visitor_id
                and v.started_at >= m.started_at and v.started_at <= m.last_seen_at
            offset 0  -- not flattened: a primary-key probe per merged visit, never the site's visits
        ) v
        where v.started_at < range_to
    ),
    counts as (
        select starts[width_bucket(q.quarter, starts)] as start, q.visits::bigint as visits,
            q.bounces::bigint as bounces, q.visit_pageviews
        from page_view_quarters q
        where q.site_id = site and q.quarter >= starts[1] and q.quarter < range_to
        union all
        select m.start, 1, (m.pageviews = 1)::integer, m.pageviews from merged m
        union all
        select r.start, -1, -(r.pageviews = 1)::integer, -r.pageviews from replaced r
    )
    select b.start, coalesce(sum(c.visits), 0)::bigint, coalesce(sum(c.bounces), 0)::bigint,
        coalesce(sum(c.visit_pageviews), 0)::bigint
    from buckets b
    left join counts c on c.start = b.start
    group by b.start
$$;

create or replace function analytics_visits_before(
    site bigint, range_from timestamptz, range_to timestamptz, received_before timestamptz
)
returns setof page_view_visits
language sql stable as $$
    with merged as materialized (
        select * from analytics_merged_visits(site, (select analytics_watermark()), received_before)
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

-- migrate:down
set local lock_timeout = '3s';

comment on function analytics_watermark() is null;

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
    touched as (
        select distinct v.site_id, v.visitor_id, v.started_at, v.last_seen_at, v.pageviews, v.entry_path
        from pending n
        join page_view_visits v on v.site_id = n.site_id and v.visitor_id = n.visitor_id
            and v.started_at <= n.ts + interval '30 minutes' and v.last_seen_at >= n.ts - interval '30 minutes'
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

create or replace function analytics_raw_views(
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
        where p.site_id = site and p.received_at >= analytics_watermark()
            and p.ts >= analytics_watermark() - interval '24 hours'
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
                where r.site_id = site and r.received_at < analytics_watermark() and not r.is_bot
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

create or replace function analytics_bucket_visits(site bigint, starts timestamptz[], range_to timestamptz)
returns table (bucket_start timestamptz, visits bigint, bounces bigint, visit_pageviews bigint)
language sql stable as $$
    with buckets as (
        select s.start from unnest(starts) as s (start)
    ),
    merged as materialized (  -- each with its bucket (none before the first): see analytics_bucket_visitors
        select m.visitor_id, m.started_at, m.last_seen_at, m.pageviews,
            starts[width_bucket(m.started_at, starts)] as start
        from analytics_merged_visits(site, analytics_watermark(), 'infinity') m
        where m.started_at < range_to
    ),
    replaced as (
        select starts[width_bucket(v.started_at, starts)] as start, v.pageviews from merged m
        cross join lateral (
            select v.started_at, v.pageviews from page_view_visits v
            where v.site_id = site and v.visitor_id = m.visitor_id
                and v.started_at >= m.started_at and v.started_at <= m.last_seen_at
            offset 0  -- not flattened: a primary-key probe per merged visit, never the site's visits
        ) v
        where v.started_at < range_to
    ),
    counts as (
        select starts[width_bucket(q.quarter, starts)] as start, q.visits::bigint as visits,
            q.bounces::bigint as bounces, q.visit_pageviews
        from page_view_quarters q
        where q.site_id = site and q.quarter >= starts[1] and q.quarter < range_to
        union all
        select m.start, 1, (m.pageviews = 1)::integer, m.pageviews from merged m
        union all
        select r.start, -1, -(r.pageviews = 1)::integer, -r.pageviews from replaced r
    )
    select b.start, coalesce(sum(c.visits), 0)::bigint, coalesce(sum(c.bounces), 0)::bigint,
        coalesce(sum(c.visit_pageviews), 0)::bigint
    from buckets b
    left join counts c on c.start = b.start
    group by b.start
$$;

create or replace function analytics_visits_before(
    site bigint, range_from timestamptz, range_to timestamptz, received_before timestamptz
)
returns setof page_view_visits
language sql stable as $$
    with merged as materialized (
        select * from analytics_merged_visits(site, analytics_watermark(), received_before)
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
