-- migrate:up
-- analytics_count_entries (the statement triggers of page_view_visits) computed each hour's room, the
-- paths it may still keep, once per delta row (a (site, hour, path)), not once per hour: the CTE was
-- inlined into its join. Each time it counted every path the hour holds (up to 1,000 while it is
-- open) and read the watermark (analytics_watermark(), a query). A rollup step adding 300 paths to a
-- busy open hour read 300,000 rows for it (110 ms; 1,500 new paths: 511 ms, under the rollup's lock),
-- a purge chunk of 10,000 visits 10,000 counts. Now the room is counted once per hour that gains
-- visits (a loss takes no room) and the watermark once per statement. Same rows written.
set local lock_timeout = '3s';

drop function analytics_entry_paths_kept(timestamptz);

-- How many paths the UTC hour starting at `hour` may keep, given the rollups' watermark: more while
-- it is open (the watermark less than an hour past its start).
create function analytics_entry_paths_kept(hour timestamptz, watermark timestamptz) returns integer
language sql immutable as $$
    select case when hour > watermark - interval '1 hour'
        then analytics_entry_paths_open_hour() else analytics_entry_paths_per_hour() end
$$;

create or replace function analytics_count_entries(
    site_ids bigint[], hours timestamptz[], paths text[], visit_deltas integer[], bounce_deltas integer[]
) returns void
language sql as $$
    with deltas as (
        select d.site_id, d.hour, case when octet_length(d.path) <= 2000 then d.path else '(other)' end as path,
            sum(d.visits)::integer as visits, sum(d.bounces)::integer as bounces
        from unnest(site_ids, hours, paths, visit_deltas, bounce_deltas) as d (site_id, hour, path, visits, bounces)
        group by 1, 2, 3
        having sum(d.visits) <> 0 or sum(d.bounces) <> 0
    ),
    used as materialized (  -- once per hour gaining visits: only a path gaining visits takes room
        select h.site_id, h.hour, analytics_entry_paths_kept(h.hour, (select analytics_watermark())) - (
            select count(*) from page_view_entry_hourly e
            where e.site_id = h.site_id and e.hour = h.hour and e.entry_path <> '(other)'
        ) as room
        from (select site_id, hour from deltas group by 1, 2 having bool_or(visits > 0)) h
    ),
    known as materialized (  -- read before the statements below write: one snapshot
        select d.*, e.entry_path is not null as kept, u.room
        from deltas d
        left join used u on u.site_id = d.site_id and u.hour = d.hour
        left join page_view_entry_hourly e on e.site_id = d.site_id and e.hour = d.hour and e.entry_path = d.path
    ),
    placed as (
        select k.site_id, k.hour, k.visits, k.bounces,
            case
                when k.kept then k.path
                when k.visits > 0 and k.path <> '(other)' and row_number() over (
                    partition by k.site_id, k.hour, not k.kept and k.visits > 0 and k.path <> '(other)'
                    order by k.visits desc, k.path
                ) <= k.room then k.path
                else '(other)'
            end as entry_path
        from known k
    ),
    targets as materialized (
        select p.site_id, p.hour, p.entry_path, sum(p.visits)::integer as visits,
            sum(p.bounces)::integer as bounces
        from placed p
        group by 1, 2, 3
    ),
    lowered as (
        update page_view_entry_hourly e
        set visits = e.visits + t.visits, bounces = e.bounces + t.bounces
        from targets t
        where t.visits <= 0 and e.site_id = t.site_id and e.hour = t.hour and e.entry_path = t.entry_path
    )
    insert into page_view_entry_hourly as e (site_id, hour, entry_path, visits, bounces)
    select t.site_id, t.hour, t.entry_path, t.visits, t.bounces from targets t
    where t.visits > 0
    on conflict (site_id, hour, entry_path) do update
    set visits = e.visits + excluded.visits, bounces = e.bounces + excluded.bounces
$$;

-- migrate:down
set local lock_timeout = '3s';

-- How many paths the UTC hour starting at `hour` may keep now: more while it is open.
create function analytics_entry_paths_kept(hour timestamptz) returns integer
language sql stable as $$
    select case when hour > analytics_watermark() - interval '1 hour'
        then analytics_entry_paths_open_hour() else analytics_entry_paths_per_hour() end
$$;

create or replace function analytics_count_entries(
    site_ids bigint[], hours timestamptz[], paths text[], visit_deltas integer[], bounce_deltas integer[]
) returns void
language sql as $$
    with deltas as (
        select d.site_id, d.hour, case when octet_length(d.path) <= 2000 then d.path else '(other)' end as path,
            sum(d.visits)::integer as visits, sum(d.bounces)::integer as bounces
        from unnest(site_ids, hours, paths, visit_deltas, bounce_deltas) as d (site_id, hour, path, visits, bounces)
        group by 1, 2, 3
        having sum(d.visits) <> 0 or sum(d.bounces) <> 0
    ),
    used as (
        select h.site_id, h.hour, analytics_entry_paths_kept(h.hour) - (
            select count(*) from page_view_entry_hourly e
            where e.site_id = h.site_id and e.hour = h.hour and e.entry_path <> '(other)'
        ) as room
        from (select distinct site_id, hour from deltas) h
    ),
    known as materialized (  -- read before the statements below write: one snapshot
        select d.*, e.entry_path is not null as kept, u.room
        from deltas d
        join used u on u.site_id = d.site_id and u.hour = d.hour
        left join page_view_entry_hourly e on e.site_id = d.site_id and e.hour = d.hour and e.entry_path = d.path
    ),
    placed as (
        select k.site_id, k.hour, k.visits, k.bounces,
            case
                when k.kept then k.path
                when k.visits > 0 and k.path <> '(other)' and row_number() over (
                    partition by k.site_id, k.hour, not k.kept and k.visits > 0 and k.path <> '(other)'
                    order by k.visits desc, k.path
                ) <= k.room then k.path
                else '(other)'
            end as entry_path
        from known k
    ),
    targets as materialized (
        select p.site_id, p.hour, p.entry_path, sum(p.visits)::integer as visits,
            sum(p.bounces)::integer as bounces
        from placed p
        group by 1, 2, 3
    ),
    lowered as (
        update page_view_entry_hourly e
        set visits = e.visits + t.visits, bounces = e.bounces + t.bounces
        from targets t
        where t.visits <= 0 and e.site_id = t.site_id and e.hour = t.hour and e.entry_path = t.entry_path
    )
    insert into page_view_entry_hourly as e (site_id, hour, entry_path, visits, bounces)
    select t.site_id, t.hour, t.entry_path, t.visits, t.bounces from targets t
    where t.visits > 0
    on conflict (site_id, hour, entry_path) do update
    set visits = e.visits + excluded.visits, bounces = e.bounces + excluded.bounces
$$;

drop function analytics_entry_paths_kept(timestamptz, timestamptz);
