-- Analytics reports and the rollup job that keeps their tables up to date.
-- A report is one statement: the watermark, the rollups and the raw rows are read in one snapshot.

-- name: TryRollupLock :one
-- One rollup runner at a time (released when the transaction ends).
select pg_try_advisory_xact_lock(hashtext('analytics.rollup'))::boolean as locked;

-- name: SetRollupStatementTimeout :exec
-- A backlog hour can take longer than the API's statement timeout.
select set_config('statement_timeout', @timeout::text, true);

-- name: GetWatermark :one
select rolled_up_to from analytics_rollup_state;

-- name: SetWatermark :exec
insert into analytics_rollup_state (id, rolled_up_to) values (true, @rolled_up_to)
on conflict (id) do update set rolled_up_to = excluded.rolled_up_to;

-- name: FirstPendingHour :one
-- The UTC hour of the earliest row received in [received_from, received_to), if any.
-- nullable: hour
select date_trunc('hour', min(received_at), 'UTC')::timestamptz as hour
from page_views
where received_at >= coalesce(sqlc.narg(received_from)::timestamptz, '-infinity') and received_at < @received_to;

-- name: KeepSitesInWindow :exec
-- The sites with rows received in the window, or with dimension rows of an hour that ends after
-- @closed_from (the previous watermark) and by the window's end (RollupDimensions folds them),
-- locked against deletion until the rollup commits (FOR KEY SHARE, in id order), before the rollup
-- statements read them: a site deleted meanwhile is left out by their join, no rollup row of a
-- deleted site is written after its deletion commits, and a deletion never holds a site's rollup rows
-- while it waits for this run (a deadlock).
select s.id from sites s
where s.id in (
    select distinct p.site_id from page_views p
    where p.received_at >= @received_from and p.received_at < @received_to
        and p.ts >= (@received_from::timestamptz) - interval '24 hours'
    union
    select distinct d.site_id from page_view_dimension_hourly d
    where d.hour > (@closed_from::timestamptz) - interval '1 hour'
        and d.hour <= (@received_to::timestamptz) - interval '1 hour'
)
order by s.id
for key share of s;

-- name: RollupHourly :one
-- Adds the rows received in the window to their (site, UTC hour of ts), and the views (bots excluded)
-- to their quarter of the hour; returns how many rows it read. An hour rolled up without quarters
-- keeps none (null plus a count is null): it is read raw where no bucket holds it whole.
with counted as (
    select p.site_id, date_trunc('hour', p.ts, 'UTC') as hour,
        count(*) filter (where not p.is_bot) as pageviews, count(*) filter (where p.is_bot) as bot_pageviews,
        count(*) filter (where not p.is_bot and analytics_quarter_of_hour(p.ts) = 0) as pageviews_00,
        count(*) filter (where not p.is_bot and analytics_quarter_of_hour(p.ts) = 1) as pageviews_15,
        count(*) filter (where not p.is_bot and analytics_quarter_of_hour(p.ts) = 2) as pageviews_30,
        count(*) filter (where not p.is_bot and analytics_quarter_of_hour(p.ts) = 3) as pageviews_45
    from page_views p
    join sites s on s.id = p.site_id
    where p.received_at >= @received_from and p.received_at < @received_to
        and p.ts >= (@received_from::timestamptz) - interval '24 hours'
    group by p.site_id, date_trunc('hour', p.ts, 'UTC')
),
stored as (
    insert into page_view_hourly (
        site_id, hour, pageviews, bot_pageviews, pageviews_00, pageviews_15, pageviews_30, pageviews_45
    )
    select site_id, hour, pageviews, bot_pageviews, pageviews_00, pageviews_15, pageviews_30, pageviews_45
    from counted
    on conflict (site_id, hour) do update
    set pageviews = page_view_hourly.pageviews + excluded.pageviews,
        bot_pageviews = page_view_hourly.bot_pageviews + excluded.bot_pageviews,
        pageviews_00 = page_view_hourly.pageviews_00 + excluded.pageviews_00,
        pageviews_15 = page_view_hourly.pageviews_15 + excluded.pageviews_15,
        pageviews_30 = page_view_hourly.pageviews_30 + excluded.pageviews_30,
        pageviews_45 = page_view_hourly.pageviews_45 + excluded.pageviews_45
)
select coalesce(sum(pageviews + bot_pageviews), 0)::bigint as rows from counted;

-- name: RollupDimensions :exec
-- Adds the views (bots excluded) received in the window to their (site, dimension, UTC hour of ts,
-- value), keeping at most @keep values per (site, dimension, hour): the most viewed (then by value) of
-- the stored and the new counts together; the others are folded into the row of value @other (their
-- views summed, so every hour's total is kept). The empty value ("none": direct traffic, no campaign)
-- and @other itself are never folded, so an hour holds at most @keep + 2 rows per dimension. A value
-- folded in an earlier run and seen again (a late view) is ranked with its new views only.
-- An hour still open at the window's end (it ends after @received_to: views of it still arrive on
-- time) keeps up to @keep_open values; the run that closes it (the hour ends after @closed_from, the
-- previous watermark, and by @received_to: windows skip spans where nothing was received, so a
-- window's start may be later) ranks it again with @keep, its stored values with its new views, even
-- with none. Ranked to @keep at every five-minute step, a page that missed the first step's top values
-- could never enter them (a review: an hour's most viewed page all in @other); an hour with at most
-- @keep_open values a step is now ranked as when the rollup added whole hours.
-- Without the bound a third party holding the public ingest key could store one row per distinct
-- value it sends, and every breakdown over the period would re-aggregate them all. A value longer
-- than @longest bytes (none the ingest stores now; a row stored before it bounded them) is counted
-- in @other: a btree entry holds at most 2704 bytes, and one such value failed every run.
with viewed as materialized (
    select p.site_id, date_trunc('hour', p.ts, 'UTC') as hour,
        case when octet_length(p.path) <= @longest::int then p.path else @other::text end as path,
        case when octet_length(p.referrer_source) <= @longest::int then p.referrer_source
            else @other::text end as referrer_source,
        case when octet_length(p.utm_campaign) <= @longest::int then p.utm_campaign
            else @other::text end as utm_campaign,
        p.device, p.browser, count(*) as views
    from page_views p
    join sites s on s.id = p.site_id
    where p.received_at >= @received_from and p.received_at < @received_to and not p.is_bot
        and p.ts >= (@received_from::timestamptz) - interval '24 hours'
    group by 1, 2, 3, 4, 5, 6, 7
),
counted as (
    select v.site_id, 'path'::text as dimension, v.hour, v.path as value, sum(v.views) as views
    from viewed v group by 1, 2, 3, 4
    union all
    select v.site_id, 'referrer_source', v.hour, v.referrer_source, sum(v.views)
    from viewed v group by 1, 2, 3, 4
    union all
    select v.site_id, 'utm_campaign', v.hour, v.utm_campaign, sum(v.views)
    from viewed v group by 1, 2, 3, 4
    union all
    select v.site_id, 'device', v.hour, v.device, sum(v.views)
    from viewed v group by 1, 2, 3, 4
    union all
    select v.site_id, 'browser', v.hour, v.browser, sum(v.views)
    from viewed v group by 1, 2, 3, 4
),
closing as (  -- the hours that ended since the previous watermark: ranked again with @keep
    select distinct d.site_id, d.dimension, d.hour
    from page_view_dimension_hourly d
    join sites s on s.id = d.site_id
    where d.hour > (@closed_from::timestamptz) - interval '1 hour'
        and d.hour <= (@received_to::timestamptz) - interval '1 hour'
),
stored as (
    select h.site_id, h.dimension, h.hour, h.value, h.views
    from (
        select distinct c.site_id, c.dimension, c.hour from counted c
        union
        select k.site_id, k.dimension, k.hour from closing k
    ) g
    cross join lateral (
        select d.site_id, d.dimension, d.hour, d.value, d.views from page_view_dimension_hourly d
        where d.site_id = g.site_id and d.dimension = g.dimension and d.hour = g.hour
        offset 0  -- not flattened: one primary-key range per (site, dimension, hour), never the table
    ) h
),
merged as (
    select coalesce(c.site_id, t.site_id) as site_id, coalesce(c.dimension, t.dimension) as dimension,
        coalesce(c.hour, t.hour) as hour, coalesce(c.value, t.value) as value,
        coalesce(c.views, 0) as added, coalesce(t.views, 0) as kept
    from counted c
    full join stored t
        on t.site_id = c.site_id and t.dimension = c.dimension and t.hour = c.hour and t.value = c.value
),
ranked as (
    select m.*, m.value in ('', @other::text) as exempt,
        case when m.hour > (@received_to::timestamptz) - interval '1 hour' then @keep_open::bigint
            else @keep::bigint end as bound,
        row_number() over (
            partition by m.site_id, m.dimension, m.hour, m.value in ('', @other::text)
            order by m.added + m.kept desc, m.value
        ) as rank
    from merged m
),
folded as (
    delete from page_view_dimension_hourly h
    using ranked r
    where not r.exempt and r.rank > r.bound and r.kept > 0
        and h.site_id = r.site_id and h.dimension = r.dimension and h.hour = r.hour and h.value = r.value
)
insert into page_view_dimension_hourly (site_id, dimension, hour, value, views)
select r.site_id, r.dimension, r.hour, r.value, r.views from (
    select r.site_id, r.dimension, r.hour,
        case when r.exempt or r.rank <= r.bound then r.value else @other::text end as value,
        sum(case when r.exempt or r.rank <= r.bound then r.added else r.added + r.kept end) as views
    from ranked r
    group by 1, 2, 3, 4
) r
where r.views > 0
on conflict (site_id, dimension, hour, value) do update
set views = page_view_dimension_hourly.views + excluded.views;

-- name: RollupVisitors :exec
-- Adds the visitors (bots excluded) of the rows received in the window to their (site, UTC hour of ts),
-- with the quarters of the hour they were seen in (bit n: minutes 15n to 15n+14); a visitor already
-- stored gains the new quarters, and one stored without quarters (by an earlier release) keeps none.
insert into page_view_hourly_visitors (site_id, hour, visitor_id, seen_quarters)
select p.site_id, date_trunc('hour', p.ts, 'UTC'), p.visitor_id,
    bit_or(1 << analytics_quarter_of_hour(p.ts))::smallint
from page_views p
join sites s on s.id = p.site_id
where p.received_at >= @received_from and p.received_at < @received_to and not p.is_bot
    and p.ts >= (@received_from::timestamptz) - interval '24 hours'
group by p.site_id, date_trunc('hour', p.ts, 'UTC'), p.visitor_id
on conflict (site_id, hour, visitor_id) do update
set seen_quarters = page_view_hourly_visitors.seen_quarters | excluded.seen_quarters
where page_view_hourly_visitors.seen_quarters <> page_view_hourly_visitors.seen_quarters | excluded.seen_quarters;

-- name: RollupVisits :exec
-- Stores the merged visits: a merged visit starts at its earliest member, so it replaces the stored
-- visit with that start (upsert) and the later stored visits it absorbed are deleted (disjoint rows:
-- the order in which PostgreSQL runs the two does not matter).
with merged as materialized (
    select * from analytics_merged_visits(null::bigint, @received_from::timestamptz, @received_to::timestamptz)
),
absorbed as (
    delete from page_view_visits v
    using merged m
    where v.site_id = m.site_id and v.visitor_id = m.visitor_id
        and v.started_at > m.started_at and v.started_at <= m.last_seen_at
)
insert into page_view_visits (site_id, visitor_id, started_at, last_seen_at, pageviews, entry_path)
select m.site_id, m.visitor_id, m.started_at, m.last_seen_at, m.pageviews, m.entry_path from merged m
on conflict (site_id, visitor_id, started_at) do update
set last_seen_at = excluded.last_seen_at, pageviews = excluded.pageviews, entry_path = excluded.entry_path;

-- name: FoldEntryHours :exec
-- The hours that ended since @closed_from (the previous watermark) and by @received_to, as
-- RollupDimensions closes them: each keeps a row for its analytics_entry_paths_per_hour() most visited
-- entry paths (then by path) and sums the others into its @other row. While open it kept up to
-- analytics_entry_paths_open_hour(), first come: ranked at each step, a path that came after the
-- hour's first hundred could never enter them. Only hours holding more rows are read twice.
with closing as (
    select e.site_id, e.hour
    from page_view_entry_hourly e
    where e.hour > (@closed_from::timestamptz) - interval '1 hour'
        and e.hour <= (@received_to::timestamptz) - interval '1 hour'
        and e.entry_path <> @other::text
    group by e.site_id, e.hour
    having count(*) > analytics_entry_paths_per_hour()
),
ranked as (
    select e.site_id, e.hour, e.entry_path,
        row_number() over (partition by e.site_id, e.hour order by e.visits desc, e.entry_path) as rank
    from closing c
    cross join lateral (
        select e.site_id, e.hour, e.entry_path, e.visits from page_view_entry_hourly e
        where e.site_id = c.site_id and e.hour = c.hour and e.entry_path <> @other::text
        offset 0  -- not flattened: one primary-key range per hour, never the table
    ) e
),
folded as (
    delete from page_view_entry_hourly e
    using ranked r
    where r.rank > analytics_entry_paths_per_hour()
        and e.site_id = r.site_id and e.hour = r.hour and e.entry_path = r.entry_path
    returning e.site_id, e.hour, e.visits, e.bounces
)
insert into page_view_entry_hourly as e (site_id, hour, entry_path, visits, bounces)
select f.site_id, f.hour, @other::text, sum(f.visits), sum(f.bounces) from folded f
group by f.site_id, f.hour
on conflict (site_id, hour, entry_path) do update
set visits = e.visits + excluded.visits, bounces = e.bounces + excluded.bounces;

-- name: ReportSummary :one
-- The views from the hourly rollups and the raw rows; the visitors and visits from their counts
-- (analytics_bucket_visitors, analytics_bucket_visits: the period as one bucket).
with raw as materialized (
    select r.is_bot
    from analytics_raw_views(@site_id::bigint, @range_from::timestamptz, @range_to::timestamptz, '', 'UTC') r
),
rolled as (
    select coalesce(sum(h.pageviews), 0) as pageviews, coalesce(sum(h.bot_pageviews), 0) as bot_pageviews
    from page_view_hourly h
    where h.site_id = @site_id and h.hour >= @range_from and h.hour < @range_to
        and analytics_hour_is_whole(h.hour, @range_from, @range_to, '', 'UTC')
),
visitors as (
    select coalesce(sum(v.visitors), 0) as visitors
    from analytics_bucket_visitors(@site_id, array[@range_from], @range_to) as v (bucket_start, visitors)
),
visits as (
    select coalesce(sum(v.visits), 0) as visits, coalesce(sum(v.bounces), 0) as bounces,
        coalesce(sum(v.visit_pageviews), 0) as visit_pageviews
    from analytics_bucket_visits(@site_id, array[@range_from], @range_to)
        as v (bucket_start, visits, bounces, visit_pageviews)
)
select
    (rolled.pageviews + (select count(*) from raw where not raw.is_bot))::bigint as pageviews,
    (rolled.bot_pageviews + (select count(*) from raw where raw.is_bot))::bigint as bot_pageviews,
    visitors.visitors::bigint as visitors,
    visits.visits::bigint as visits,
    visits.bounces::bigint as bounces,
    visits.visit_pageviews::bigint as visit_pageviews
from rolled, visitors, visits;

-- name: ReportTimeseries :many
-- Every bucket of the range (local hours or days of @tz, empty ones included), oldest first, with its
-- label (the local day, or the local hour and its UTC offset) read at its start. Rows are grouped by
-- their bucket's key (analytics_bucket_key: a day's is its local date) and each bucket's start is
-- computed once: a day's by analytics_bucket_start (its first instant, local_day_start, where
-- date_trunc read an ambiguous local midnight as its later instant); an hour's is the first of
-- @step's samples (every 15 minutes: every offset and change of offset falls on one) that carries
-- its key. An hour's key is not always an instant of it: date_trunc reads the local hour's start with
-- the offset of the instant truncated, so the half hour after Lord Howe's clocks go back (02:00 to
-- 01:30) has the key 01:00 at the later offset, an instant of the hour before.
-- A rolled UTC hour inside one bucket is counted from its hourly rollup; one that is not (in a zone
-- whose offset is not a whole hour: every hour of an hourly series, the hour of each local midnight)
-- from its quarters when it has them (quartered), else raw. The visitors and visits of each bucket come
-- from their counts (analytics_bucket_visitors, analytics_bucket_visits), given the buckets' starts.
with raw as materialized (
    select analytics_bucket_key(@unit::text, r.ts, @tz::text) as bucket
    from analytics_raw_views(@site_id::bigint, @range_from::timestamptz, @range_to::timestamptz, @unit, @tz, true) r
    where not r.is_bot
),
buckets as (
    select analytics_bucket_key(@unit, g, @tz) as bucket, min(g) as first_sample
    from generate_series(@range_from, @range_to, @step::interval) as g
    where g < @range_to
    group by 1
),
quartered as materialized (
    select h.hour, q.n,
        case q.n when 0 then h.pageviews_00 when 1 then h.pageviews_15 when 2 then h.pageviews_30
            else h.pageviews_45 end as views,
        analytics_bucket_key(@unit, h.hour + q.n * interval '15 minutes', @tz) as bucket
    from page_view_hourly h
    cross join generate_series(0, 3) as q (n)
    where h.site_id = @site_id and h.hour > (@range_from::timestamptz) - interval '1 hour' and h.hour < @range_to
        and analytics_hour_from_quarters(h.pageviews_00, h.hour, @range_from, @range_to, @unit, @tz)
        and h.hour + q.n * interval '15 minutes' >= @range_from
        and h.hour + q.n * interval '15 minutes' < @range_to
),
views as (
    select x.bucket, sum(x.views) as views from (
        select analytics_bucket_key(@unit, h.hour, @tz) as bucket, h.pageviews as views from page_view_hourly h
        where h.site_id = @site_id and h.hour >= @range_from and h.hour < @range_to
            and analytics_hour_is_whole(h.hour, @range_from, @range_to, @unit, @tz)
        union all
        select q.bucket, q.views from quartered q
        union all
        select r.bucket, count(*) from raw r group by r.bucket
    ) x
    group by x.bucket
),
starts as materialized (
    select k.bucket,
        case @unit::text when 'hour' then k.first_sample else analytics_bucket_start(@unit, k.bucket, @tz) end
            as start
    from buckets k
),
ordered as (
    select array_agg(s.start order by s.start) as starts from starts s
),
visitors as (
    select v.bucket_start, v.visitors
    from ordered o, analytics_bucket_visitors(@site_id, o.starts, @range_to) as v (bucket_start, visitors)
),
visits as (
    select v.bucket_start, v.visits
    from ordered o,
        analytics_bucket_visits(@site_id, o.starts, @range_to) as v (bucket_start, visits, bounces, visit_pageviews)
)
select b.start::timestamptz as bucket,
    case @unit::text
        when 'day' then to_char(b.start at time zone @tz::text, 'YYYY-MM-DD')
        else to_char(b.start at time zone @tz::text, 'YYYY-MM-DD"T"HH24:MI') || (
            select case when o.offset_ < interval '0' then '-' || to_char(-o.offset_, 'HH24:MI')
                else '+' || to_char(o.offset_, 'HH24:MI') end
            from (select (b.start at time zone @tz::text) - (b.start at time zone 'UTC') as offset_) o
        )
    end::text as label,
    coalesce(views.views, 0)::bigint as pageviews,
    coalesce(visitors.visitors, 0)::bigint as visitors,
    coalesce(visits.visits, 0)::bigint as visits
from starts b
left join views on views.bucket = b.bucket
left join visitors on visitors.bucket_start = b.start
left join visits on visits.bucket_start = b.start
order by b.start;

-- name: ReportBreakdown :many
-- Views (bots excluded) per value of @dimension, most viewed first, then by value; after the position
-- (@after_views, @after_value) when given (keyset: the next page starts after the last row shown).
-- Only the views received before @received_before when given: a walk's pages read the counts of its
-- first page (the rollups hold only views received before it while the watermark is behind it).
with raw as materialized (
    select case @dimension::text
            when 'path' then r.path
            when 'referrer_source' then r.referrer_source
            when 'utm_campaign' then r.utm_campaign
            when 'device' then r.device
            when 'browser' then r.browser
        end as value
    from analytics_raw_views(@site_id::bigint, @range_from::timestamptz, @range_to::timestamptz, '', 'UTC') r
    where not r.is_bot and r.received_at < coalesce(sqlc.narg(received_before)::timestamptz, 'infinity')
)
select x.value::text as value, sum(x.views)::bigint as views from (
    select d.value, d.views from page_view_dimension_hourly d
    where d.site_id = @site_id and d.dimension = @dimension and d.hour >= @range_from and d.hour < @range_to
        and analytics_hour_is_whole(d.hour, @range_from, @range_to, '', 'UTC')
    union all
    select r.value, 1 from raw r
) x
where not (@skip_empty::boolean and x.value = '')
group by x.value
having sqlc.narg(after_views)::bigint is null
    or sum(x.views) < sqlc.narg(after_views)::bigint
    or (sum(x.views) = sqlc.narg(after_views)::bigint and x.value > sqlc.narg(after_value)::text)
order by views desc, x.value
limit @row_limit;

-- name: ReportEntryPages :many
-- Visits per entry path (the first page of the visit), with how many of them bounced; most visits
-- first, then by path, after the position (@after_visits, @after_path) when given; of the views
-- received before @received_before when given (as ReportBreakdown). The whole UTC hours of the period
-- are read from their counts (page_view_entry_hourly: at most 101 rows a closed hour, @other among them),
-- the hours a zone with a fractional offset cuts per visit. The views not rolled up yet add the visits
-- they make and take away the stored ones they merge (analytics_visits_before's rule), each from the
-- row that counts it; a path the counts fold into @other keeps its visits from those views.
with bounds as (
    select least(  -- the first UTC hour at or after range_from
            date_trunc('hour', (@range_from::timestamptz) - interval '1 microsecond', 'UTC') + interval '1 hour',
            @range_to::timestamptz
        ) as whole_from,
        date_trunc('hour', @range_to::timestamptz, 'UTC') as whole_to
),
merged as materialized (
    select m.visitor_id, m.started_at, m.last_seen_at, m.pageviews, m.entry_path
    from analytics_merged_visits(
        @site_id::bigint, (select analytics_watermark()), coalesce(sqlc.narg(received_before)::timestamptz, 'infinity')
    ) m
),
replaced as (
    select v.started_at, v.pageviews, v.entry_path from merged m
    cross join lateral (
        select v.started_at, v.pageviews, v.entry_path from page_view_visits v
        where v.site_id = @site_id and v.visitor_id = m.visitor_id
            and v.started_at >= m.started_at and v.started_at <= m.last_seen_at
        offset 0  -- not flattened: a primary-key probe per merged visit, never the site's visits
    ) v
),
cut as (  -- the stored visits of the cut hours that no merged visit replaces
    select v.entry_path, v.pageviews from bounds b
    cross join lateral (
        select v.visitor_id, v.started_at, v.entry_path, v.pageviews from page_view_visits v
        where v.site_id = @site_id and v.started_at >= @range_from and v.started_at < b.whole_from
        union all
        select v.visitor_id, v.started_at, v.entry_path, v.pageviews from page_view_visits v
        where v.site_id = @site_id and v.started_at >= greatest(b.whole_to, b.whole_from)
            and v.started_at < @range_to
    ) v
    where not exists (
        select 1 from merged m
        where m.visitor_id = v.visitor_id and v.started_at >= m.started_at and v.started_at <= m.last_seen_at
    )
),
counts as (
    select e.entry_path as path, e.visits::bigint as visits, e.bounces::bigint as bounces
    from bounds b
    join page_view_entry_hourly e on e.site_id = @site_id and e.hour >= b.whole_from and e.hour < b.whole_to
    union all
    select c.entry_path, 1, (c.pageviews = 1)::integer from cut c
    union all
    select m.entry_path, 1, (m.pageviews = 1)::integer from merged m
    where m.started_at >= @range_from and m.started_at < @range_to
    union all
    select case when exists (
                select 1 from page_view_entry_hourly e
                where e.site_id = @site_id and e.hour = date_trunc('hour', r.started_at, 'UTC')
                    and e.entry_path = r.entry_path
            ) then r.entry_path else @other::text end,
        -1, -(r.pageviews = 1)::integer
    from bounds b
    join replaced r on r.started_at >= b.whole_from and r.started_at < b.whole_to
)
select c.path::text as path, sum(c.visits)::bigint as visits, sum(c.bounces)::bigint as bounces
from counts c
group by c.path
having sum(c.visits) > 0 and (
    sqlc.narg(after_visits)::bigint is null
    or sum(c.visits) < sqlc.narg(after_visits)::bigint
    or (sum(c.visits) = sqlc.narg(after_visits)::bigint and c.path > sqlc.narg(after_path)::text)
)
order by visits desc, path
limit @row_limit;

-- name: LocalToday :one
-- The local date in @tz at @now. PostgreSQL's time-zone data is the one the reports' zone arithmetic
-- uses (today, the range's instants, the buckets and their labels): two databases could disagree.
select ((@now::timestamptz) at time zone (@tz::text))::date as today;

-- name: ReportBounds :one
-- The instants of the local days @first_day .. @last_day of @tz, and the first local day of @tz that
-- starts at or after @kept_from (the retention's boundary: earlier days are partly or wholly purged).
-- A day starts at its first instant (local_day_start): `day::timestamp at time zone tz` is the later
-- of an ambiguous midnight's two instants.
with kept as (
    select ((@kept_from::timestamptz) at time zone (@tz::text))::date as local_day
)
select local_day_start(@first_day::date, @tz::text)::timestamptz as range_from,
    local_day_start((@last_day::date) + 1, @tz::text)::timestamptz as range_to,
    (case when local_day_start(kept.local_day, @tz::text) >= (@kept_from::timestamptz)
        then kept.local_day else kept.local_day + 1 end)::date as first_day_kept
from kept;

-- name: PageViewsReceived :one
-- The views (bots excluded) of every site received in [received_from, received_to): raw rows, kept for
-- the retention (at least two days) and found through the BRIN index on received_at.
select count(*)::bigint as pageviews
from page_views
where received_at >= @received_from and received_at < @received_to and not is_bot;

-- name: CurrentVisitors :one
select count(distinct visitor_id)::bigint as visitors
from page_views
where site_id = @site_id and ts >= @since and not is_bot;

-- name: PurgeHourlyRollups :one
-- The rollups' retention (ReportService.purge_rollups) deletes each table in chunks: one chunk is the
-- first @chunk_size rows of the hours before @before from @resume_from on, in the order of an index on
-- hour (page_view_hourly_hour_idx and its siblings; the primary keys start with site_id, so without it
-- every chunk read the whole table). The caller starts the next chunk at resume_from (the last hour
-- deleted: rows of that hour may be left), one transaction each, until a chunk comes back short, so no
-- chunk reads again the index entries of the rows its predecessors deleted, however large the backlog.
-- The rows are deleted by ctid (a Tid Scan): a condition on hour here too made the planner read every
-- expired row through the index and filter them by ctid. The statement's one snapshot picks and deletes
-- the rows, so a ctid cannot name another row meanwhile; hour never changes.
with purged as (
    delete from page_view_hourly doomed
    where doomed.ctid = any(array(
        select first.ctid
        from page_view_hourly first
        where first.hour >= @resume_from::timestamptz and first.hour < @before::timestamptz
        order by first.hour
        limit @chunk_size::integer
    ))
    returning doomed.hour
)
select count(*)::integer as deleted, coalesce(max(hour), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeDimensionRollups :one
-- One chunk, as PurgeHourlyRollups (page_view_dimension_hourly_hour_idx).
with purged as (
    delete from page_view_dimension_hourly doomed
    where doomed.ctid = any(array(
        select first.ctid
        from page_view_dimension_hourly first
        where first.hour >= @resume_from::timestamptz and first.hour < @before::timestamptz
        order by first.hour
        limit @chunk_size::integer
    ))
    returning doomed.hour
)
select count(*)::integer as deleted, coalesce(max(hour), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeHourlyVisitors :one
-- One chunk, as PurgeHourlyRollups (page_view_hourly_visitors_hour_idx).
with purged as (
    delete from page_view_hourly_visitors doomed
    where doomed.ctid = any(array(
        select first.ctid
        from page_view_hourly_visitors first
        where first.hour >= @resume_from::timestamptz and first.hour < @before::timestamptz
        order by first.hour
        limit @chunk_size::integer
    ))
    returning doomed.hour
)
select count(*)::integer as deleted, coalesce(max(hour), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeVisits :one
-- One chunk of the visits last seen before @before, as PurgeHourlyRollups but found by started_at
-- (page_view_visits_started_at_idx): a visit starts no later than it was last seen, and started_at,
-- unlike last_seen_at, never changes, so the index leaves the rollup's updates of a visit HOT. A visit
-- that started before @before and was seen since is kept, read by about one chunk of each purge (the
-- next starts after it). The condition on last_seen_at is checked again on the row deleted: a visit a
-- rollup extended meanwhile is kept.
with purged as (
    delete from page_view_visits doomed
    where doomed.ctid = any(array(
        select first.ctid
        from page_view_visits first
        where first.started_at >= @resume_from::timestamptz and first.started_at < @before::timestamptz
          and first.last_seen_at < @before::timestamptz
        order by first.started_at
        limit @chunk_size::integer
    ))
    and doomed.last_seen_at < @before::timestamptz
    returning doomed.started_at
)
select count(*)::integer as deleted,
    coalesce(max(started_at), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeDailyVisitors :one
-- One chunk, as PurgeHourlyRollups, by day (page_view_daily_visitors_day_idx).
with purged as (
    delete from page_view_daily_visitors doomed
    where doomed.ctid = any(array(
        select first.ctid
        from page_view_daily_visitors first
        where first.day >= @resume_from::timestamptz and first.day < @before::timestamptz
        order by first.day
        limit @chunk_size::integer
    ))
    returning doomed.day
)
select count(*)::integer as deleted, coalesce(max(day), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeQuarters :one
-- One chunk, as PurgeHourlyRollups, by quarter hour (page_view_quarters_quarter_idx). Purged after
-- the visits: a visit deleted afterwards would lower the count of a quarter no longer kept (its
-- trigger writes no row back).
with purged as (
    delete from page_view_quarters doomed
    where doomed.ctid = any(array(
        select first.ctid
        from page_view_quarters first
        where first.quarter >= @resume_from::timestamptz and first.quarter < @before::timestamptz
        order by first.quarter
        limit @chunk_size::integer
    ))
    returning doomed.quarter
)
select count(*)::integer as deleted, coalesce(max(quarter), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeEntryHourly :one
-- One chunk, as PurgeHourlyRollups (page_view_entry_hourly_hour_idx). Purged after the visits, as
-- PurgeQuarters.
with purged as (
    delete from page_view_entry_hourly doomed
    where doomed.ctid = any(array(
        select first.ctid
        from page_view_entry_hourly first
        where first.hour >= @resume_from::timestamptz and first.hour < @before::timestamptz
        order by first.hour
        limit @chunk_size::integer
    ))
    returning doomed.hour
)
select count(*)::integer as deleted, coalesce(max(hour), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: DeletedSitesWithRollups :many
-- The deleted sites (their `deleted_sites` tombstone) that still have rollup rows. A site's deletion
-- leaves its rollups to the chunks below (migration 20261205170000): one statement of tens of millions
-- of rows outlasted the statement timeout. A probe of each table's primary key per tombstone.
select d.site_id from deleted_sites d
where exists (select 1 from page_view_hourly r where r.site_id = d.site_id)
    or exists (select 1 from page_view_dimension_hourly r where r.site_id = d.site_id)
    or exists (select 1 from page_view_hourly_visitors r where r.site_id = d.site_id)
    or exists (select 1 from page_view_visits r where r.site_id = d.site_id)
    or exists (select 1 from page_view_daily_visitors r where r.site_id = d.site_id)
    or exists (select 1 from page_view_quarters r where r.site_id = d.site_id)
    or exists (select 1 from page_view_entry_hourly r where r.site_id = d.site_id)
order by d.site_id;

-- name: PurgeSiteHourlyRollups :one
-- One chunk of a deleted site's rows, through its primary key from @resume_from on (the last hour a
-- chunk deleted: rows of that hour may be left), one transaction each, so no chunk reads again the
-- index entries of the rows its predecessors deleted. By ctid (CONVENTIONS.md, "A chunked delete");
-- the rows of a deleted site never change: no lock.
with purged as (
    delete from page_view_hourly doomed
    where doomed.ctid = any(array(
        select first.ctid from page_view_hourly first
        where first.site_id = @site_id and first.hour >= @resume_from::timestamptz
        order by first.hour
        limit @chunk_size::integer
    ))
    returning doomed.hour
)
select count(*)::integer as deleted, coalesce(max(hour), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeSiteHourlyVisitors :one
-- One chunk, as PurgeSiteHourlyRollups.
with purged as (
    delete from page_view_hourly_visitors doomed
    where doomed.ctid = any(array(
        select first.ctid from page_view_hourly_visitors first
        where first.site_id = @site_id and first.hour >= @resume_from::timestamptz
        order by first.hour
        limit @chunk_size::integer
    ))
    returning doomed.hour
)
select count(*)::integer as deleted, coalesce(max(hour), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeSiteDimensionRollups :one
-- One chunk, as PurgeSiteHourlyRollups, resuming at the last (dimension, hour): the primary key's order.
with purged as (
    delete from page_view_dimension_hourly doomed
    where doomed.ctid = any(array(
        select first.ctid from page_view_dimension_hourly first
        where first.site_id = @site_id
            and (first.dimension, first.hour) >= (@resume_dimension::text, @resume_from::timestamptz)
        order by first.dimension, first.hour
        limit @chunk_size::integer
    ))
    returning doomed.dimension, doomed.hour
), last as (
    select dimension, hour from purged order by dimension desc, hour desc limit 1
)
select (select count(*) from purged)::integer as deleted,
       coalesce((select dimension from last), @resume_dimension::text)::text as resume_dimension,
       coalesce((select hour from last), @resume_from::timestamptz)::timestamptz as resume_from;

-- name: PurgeSiteVisits :one
-- One chunk, as PurgeSiteHourlyRollups, resuming at the last visitor (the primary key's order).
with purged as (
    delete from page_view_visits doomed
    where doomed.ctid = any(array(
        select first.ctid from page_view_visits first
        where first.site_id = @site_id and first.visitor_id >= @resume_visitor::bigint
        order by first.visitor_id
        limit @chunk_size::integer
    ))
    returning doomed.visitor_id
)
select count(*)::integer as deleted, coalesce(max(visitor_id), @resume_visitor::bigint)::bigint as resume_visitor
from purged;

-- name: PurgeSiteDailyVisitors :one
-- One chunk, as PurgeSiteHourlyRollups, resuming at the last day.
with purged as (
    delete from page_view_daily_visitors doomed
    where doomed.ctid = any(array(
        select first.ctid from page_view_daily_visitors first
        where first.site_id = @site_id and first.day >= @resume_from::timestamptz
        order by first.day
        limit @chunk_size::integer
    ))
    returning doomed.day
)
select count(*)::integer as deleted, coalesce(max(day), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeSiteQuarters :one
-- One chunk, as PurgeSiteHourlyRollups, resuming at the last quarter hour.
with purged as (
    delete from page_view_quarters doomed
    where doomed.ctid = any(array(
        select first.ctid from page_view_quarters first
        where first.site_id = @site_id and first.quarter >= @resume_from::timestamptz
        order by first.quarter
        limit @chunk_size::integer
    ))
    returning doomed.quarter
)
select count(*)::integer as deleted, coalesce(max(quarter), @resume_from::timestamptz)::timestamptz as resume_from
from purged;

-- name: PurgeSiteEntryHourly :one
-- One chunk, as PurgeSiteHourlyRollups, resuming at the last hour.
with purged as (
    delete from page_view_entry_hourly doomed
    where doomed.ctid = any(array(
        select first.ctid from page_view_entry_hourly first
        where first.site_id = @site_id and first.hour >= @resume_from::timestamptz
        order by first.hour
        limit @chunk_size::integer
    ))
    returning doomed.hour
)
select count(*)::integer as deleted, coalesce(max(hour), @resume_from::timestamptz)::timestamptz as resume_from
from purged;
