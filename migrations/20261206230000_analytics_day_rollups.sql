-- migrate:up
-- Reports read counts, not visitors. The summary and the time series counted distinct visitors over
-- every visitor row of their period (page_view_hourly_visitors) and their visits over every visit
-- (page_view_visits): their cost grew with the visitors a holder of a site's public ingest key creates
-- (each new user agent is one). At some 60,000 visitors a day an 89-day series took 8.3 s, and two
-- days of one address's ingest would have pushed it past the statement timeout. Now:
--
-- * page_view_daily_visitors: each visitor of a site's UTC day once, with the first and the last
--   quarter hour of the day (0..95) it was seen in. Visitor ids change at UTC midnight (the daily
--   salt), so the visitors of a period are the sum of its UTC days' visitors, and those of the part of
--   a day after (before) a cut are those last (first) seen after (before) it.
-- * page_view_quarters, per site and UTC quarter hour: how many of the day's visitors were first and
--   last seen in it (visitors_first, visitors_last), and the visits that started in it (visits,
--   bounces, visit_pageviews). A report sums these: about 96 rows a day, whatever the traffic.
-- * page_view_hourly.visitors: the distinct visitors of the hour (an hourly series).
--
-- Triggers keep them: whatever writes the visitor rows and the visits (this release's rollup, the
-- previous release's during the deploy, the fill of 20261206230100) keeps the counts with them. A
-- visitor row without quarters (rolled up before 20261205030000, or by the previous release) counts
-- as seen in the whole hour: exact wherever a report's cut falls on a whole hour; where it does not
-- (a zone with a fractional offset), a report reads that part of the day per visitor, as before
-- (analytics_cut_from_counts).
--
-- One exception to the sum of days, aging out with the retention: before 68475a5 (2026-12-02) a
-- late view was hashed with the salt of the day it arrived, not of its ts, so a visitor id of those
-- days can be seen on two UTC days; a period or local day across that midnight counts it twice
-- (count(distinct) counted it once).
set local lock_timeout = '3s';

create table page_view_daily_visitors (
    site_id bigint not null,
    day timestamptz not null,
    visitor_id bigint not null,
    first_quarter smallint not null check (first_quarter between 0 and 95),
    last_quarter smallint not null check (last_quarter between first_quarter and 95),
    primary key (site_id, day, visitor_id)
);
create index page_view_daily_visitors_day_idx on page_view_daily_visitors (day);

create table page_view_quarters (
    site_id bigint not null,
    quarter timestamptz not null,
    visitors_first integer not null default 0,
    visitors_last integer not null default 0,
    visits integer not null default 0,
    bounces integer not null default 0,
    visit_pageviews bigint not null default 0,
    primary key (site_id, quarter)
);
create index page_view_quarters_quarter_idx on page_view_quarters (quarter);

alter table page_view_hourly add column visitors integer not null default 0;

-- The quarter hour of its UTC day that `at` lies in: 0 for 00:00-00:14 .. 95 for 23:45-23:59.
create function analytics_quarter_of_day(at timestamptz) returns integer
language sql immutable parallel safe as $$
    select extract(hour from at at time zone 'UTC')::integer * 4 + analytics_quarter_of_hour(at)
$$;

-- The first and the last quarter hour of its UTC day a visitor row of `hour` was seen in (a row
-- without quarters: the hour's first and last).
create function analytics_first_quarter_seen(hour timestamptz, seen_quarters smallint) returns integer
language sql immutable parallel safe as $$
    select analytics_quarter_of_day(hour) + case
        when seen_quarters is null or seen_quarters & 1 <> 0 then 0
        when seen_quarters & 2 <> 0 then 1 when seen_quarters & 4 <> 0 then 2 else 3 end
$$;

create function analytics_last_quarter_seen(hour timestamptz, seen_quarters smallint) returns integer
language sql immutable parallel safe as $$
    select analytics_quarter_of_day(hour) + case
        when seen_quarters is null or seen_quarters & 8 <> 0 then 3
        when seen_quarters & 4 <> 0 then 2 when seen_quarters & 2 <> 0 then 1 else 0 end
$$;

-- The first instant of the UTC quarter hour `at` lies in.
create function analytics_quarter_start(at timestamptz) returns timestamptz
language sql immutable parallel safe as $$
    select date_bin('15 minutes', at, timestamptz '2000-01-01 00:00+00')
$$;

-- The visitor rows a statement wrote (the transition table `added`), folded into their day: a visitor
-- new to the day is added, one seen earlier or later than the day knew moves its first or last quarter.
create function page_view_hourly_visitors_fold() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        update page_view_hourly h set visitors = h.visitors + n.visitors
        from (select a.site_id, a.hour, count(*)::integer as visitors from added a group by 1, 2) n
        where h.site_id = n.site_id and h.hour = n.hour;
    end if;
    with seen as (
        select a.site_id, date_trunc('day', a.hour, 'UTC') as day, a.visitor_id,
            min(analytics_first_quarter_seen(a.hour, a.seen_quarters)) as first_quarter,
            max(analytics_last_quarter_seen(a.hour, a.seen_quarters)) as last_quarter
        from added a
        group by 1, 2, 3
    ),
    widened as materialized (  -- read before the insert below writes: one snapshot
        select s.site_id, s.day, s.visitor_id,
            least(s.first_quarter, k.first_quarter) as first_quarter,
            greatest(s.last_quarter, k.last_quarter) as last_quarter,
            k.first_quarter as was_first, k.last_quarter as was_last
        from seen s
        left join page_view_daily_visitors k
            on k.site_id = s.site_id and k.day = s.day and k.visitor_id = s.visitor_id
        where k.visitor_id is null or s.first_quarter < k.first_quarter or s.last_quarter > k.last_quarter
    ),
    stored as (
        insert into page_view_daily_visitors (site_id, day, visitor_id, first_quarter, last_quarter)
        select w.site_id, w.day, w.visitor_id, w.first_quarter, w.last_quarter from widened w
        on conflict (site_id, day, visitor_id) do update
        set first_quarter = excluded.first_quarter, last_quarter = excluded.last_quarter
    ),
    moves as (
        select w.site_id, w.day + w.first_quarter * interval '15 minutes' as quarter, 1 as firsts, 0 as lasts
        from widened w
        union all
        select w.site_id, w.day + w.was_first * interval '15 minutes', -1, 0 from widened w where w.was_first is not null
        union all
        select w.site_id, w.day + w.last_quarter * interval '15 minutes', 0, 1 from widened w
        union all
        select w.site_id, w.day + w.was_last * interval '15 minutes', 0, -1 from widened w where w.was_last is not null
    )
    insert into page_view_quarters (site_id, quarter, visitors_first, visitors_last)
    select m.site_id, m.quarter, sum(m.firsts), sum(m.lasts) from moves m
    group by 1, 2
    having sum(m.firsts) <> 0 or sum(m.lasts) <> 0
    on conflict (site_id, quarter) do update
    set visitors_first = page_view_quarters.visitors_first + excluded.visitors_first,
        visitors_last = page_view_quarters.visitors_last + excluded.visitors_last;
    return null;
end
$$;

create trigger page_view_hourly_visitors_added after insert on page_view_hourly_visitors
referencing new table as added
for each statement execute function page_view_hourly_visitors_fold();
create trigger page_view_hourly_visitors_changed after update on page_view_hourly_visitors
referencing new table as added
for each statement execute function page_view_hourly_visitors_fold();

-- The visits a statement wrote (`added`) and replaced or deleted (`removed`), counted in the quarter
-- hour they started in. A deletion only lowers counts that are still kept: the retention purges
-- page_view_quarters after page_view_visits, and a count it purged first is not written back.
create function page_view_visits_count_removed() returns trigger
language plpgsql as $$
begin
    update page_view_quarters q
    set visits = q.visits - r.visits, bounces = q.bounces - r.bounces,
        visit_pageviews = q.visit_pageviews - r.visit_pageviews
    from (
        select v.site_id, analytics_quarter_start(v.started_at) as quarter, count(*)::integer as visits,
            count(*) filter (where v.pageviews = 1)::integer as bounces, sum(v.pageviews) as visit_pageviews
        from removed v
        group by 1, 2
    ) r
    where q.site_id = r.site_id and q.quarter = r.quarter;
    return null;
end
$$;

create function page_view_visits_count_added() returns trigger
language plpgsql as $$
begin
    insert into page_view_quarters (site_id, quarter, visits, bounces, visit_pageviews)
    select c.site_id, c.quarter, sum(c.visits), sum(c.bounces), sum(c.visit_pageviews)
    from (
        select v.site_id, analytics_quarter_start(v.started_at) as quarter, 1 as visits,
            (v.pageviews = 1)::integer as bounces, v.pageviews::bigint as visit_pageviews
        from added v
    ) c
    group by 1, 2
    on conflict (site_id, quarter) do update
    set visits = page_view_quarters.visits + excluded.visits,
        bounces = page_view_quarters.bounces + excluded.bounces,
        visit_pageviews = page_view_quarters.visit_pageviews + excluded.visit_pageviews;
    return null;
end
$$;

-- An update moves a visit's counts from its old row to its new one (its start never changes: the
-- rollup's upsert keys on it; its views and whether it bounced do).
create function page_view_visits_count_changed() returns trigger
language plpgsql as $$
begin
    insert into page_view_quarters (site_id, quarter, visits, bounces, visit_pageviews)
    select c.site_id, c.quarter, sum(c.visits), sum(c.bounces), sum(c.visit_pageviews)
    from (
        select v.site_id, analytics_quarter_start(v.started_at) as quarter, 1 as visits,
            (v.pageviews = 1)::integer as bounces, v.pageviews::bigint as visit_pageviews
        from added v
        union all
        select v.site_id, analytics_quarter_start(v.started_at), -1, -(v.pageviews = 1)::integer, -v.pageviews::bigint
        from removed v
    ) c
    group by 1, 2
    on conflict (site_id, quarter) do update
    set visits = page_view_quarters.visits + excluded.visits,
        bounces = page_view_quarters.bounces + excluded.bounces,
        visit_pageviews = page_view_quarters.visit_pageviews + excluded.visit_pageviews;
    return null;
end
$$;

create trigger page_view_visits_added after insert on page_view_visits
referencing new table as added
for each statement execute function page_view_visits_count_added();
create trigger page_view_visits_changed after update on page_view_visits
referencing old table as removed new table as added
for each statement execute function page_view_visits_count_changed();
create trigger page_view_visits_removed after delete on page_view_visits
referencing old table as removed
for each statement execute function page_view_visits_count_removed();

-- Whether the visitors a site's UTC hour rolled up were rolled up with their quarters (pageviews_00
-- is null for one that was not, or that the previous release added to: see 20261205030000). An hour
-- not rolled up has none to lack.
create function analytics_hour_has_quarters(site bigint, rolled_hour timestamptz) returns boolean
language sql stable as $$
    select not exists (
        select 1 from page_view_hourly h
        where h.site_id = site and h.hour = rolled_hour and h.pageviews_00 is null
    )
$$;

-- Whether a report can read the visitors of the part of a UTC day before or after `cut` from the
-- day's counts: the cut falls on a UTC hour, or on a quarter hour of an hour with its quarters.
create function analytics_cut_from_counts(site bigint, cut timestamptz) returns boolean
language sql stable as $$
    select cut = date_trunc('hour', cut, 'UTC')
        or (
            cut = analytics_quarter_start(cut)
            and analytics_hour_has_quarters(site, date_trunc('hour', cut, 'UTC'))
        )
$$;

-- The distinct visitors (bots excluded) of each bucket [starts[i], starts[i + 1]) of a report, the
-- last ending at range_to; `starts` ascending, on UTC quarter hours. A bucket is cut into its parts of
-- UTC days, whose visitors add up (ids change at UTC midnight). A part that starts its day is read from
-- the quarters' visitors_first (the visitors first seen before its end), one that ends its day from
-- visitors_last, a whole UTC hour from page_view_hourly.visitors: about 96 rows a day at most. Only a
-- part that is none of these (an hour of a zone with a fractional offset; a cut in an hour rolled up
-- without quarters) is read per visitor, as the reports did before. The views not rolled up yet add
-- the visitors the counts of their part do not hold (one probe per visitor and part).
create function analytics_bucket_visitors(site bigint, starts timestamptz[], range_to timestamptz)
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

-- The visits (bots excluded) that start in each bucket of a report (as analytics_bucket_visitors),
-- with their bounces and views: the quarters' counts of the stored visits, less those the views not
-- rolled up yet merge into others (analytics_visits_before's rule), plus the visits they make.
create function analytics_bucket_visits(site bigint, starts timestamptz[], range_to timestamptz)
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

-- migrate:down
set local lock_timeout = '3s';
drop function analytics_bucket_visits(bigint, timestamptz[], timestamptz);
drop function analytics_bucket_visitors(bigint, timestamptz[], timestamptz);
drop function analytics_cut_from_counts(bigint, timestamptz);
drop function analytics_hour_has_quarters(bigint, timestamptz);
drop trigger page_view_visits_removed on page_view_visits;
drop trigger page_view_visits_changed on page_view_visits;
drop trigger page_view_visits_added on page_view_visits;
drop function page_view_visits_count_removed();
drop function page_view_visits_count_changed();
drop function page_view_visits_count_added();
drop trigger page_view_hourly_visitors_changed on page_view_hourly_visitors;
drop trigger page_view_hourly_visitors_added on page_view_hourly_visitors;
drop function page_view_hourly_visitors_fold();
drop function analytics_quarter_start(timestamptz);
drop function analytics_last_quarter_seen(timestamptz, smallint);
drop function analytics_first_quarter_seen(timestamptz, smallint);
drop function analytics_quarter_of_day(timestamptz);
alter table page_view_hourly drop column visitors;
drop table page_view_quarters;
drop table page_view_daily_visitors;
