-- migrate:up
-- The entry pages report counts, not visits. It grouped every visit of its period (page_view_visits)
-- by entry path: its cost grew with the visits a holder of a site's public ingest key creates (each
-- new user agent is a visitor, each a visit). Now page_view_entry_hourly keeps, per site, UTC hour
-- (of the visit's start) and entry path, the visits and bounces; the visits' triggers keep it, so this
-- release's rollup, the previous release's during the deploy and the fill of 20261207010100 keep it
-- alike.
--
-- As the breakdowns' dimensions (RollupDimensions): while an hour is open (the rollup's watermark is
-- less than an hour past its start) it keeps up to analytics_entry_paths_open_hour() paths, first come
-- (within a statement, most visits first); the rollup step that closes it folds it to its
-- analytics_entry_paths_per_hour() most visited (FoldEntryHours), ranked on all its visits, the rest
-- summed in its '(other)' row. A closed hour gives a path new to it a row while it has fewer; a visit
-- whose path finds its hour full counts in '(other)', and so do its later changes: a path has a row in
-- an hour or is counted in its '(other)', for good (rows are deleted only by the fold and the purges).
-- A report then reads at most 101 rows per closed hour of its period, and per visit only the two
-- hours a zone with a fractional offset cuts and the views not rolled up yet, as the breakdowns do.
-- The previous release's rollup folds nothing: an hour that closes during the deploy keeps up to
-- analytics_entry_paths_open_hour() rows.
set local lock_timeout = '3s';

create table page_view_entry_hourly (
    site_id bigint not null,
    hour timestamptz not null,
    entry_path text not null,
    visits integer not null default 0,
    bounces integer not null default 0,
    primary key (site_id, hour, entry_path)
);
create index page_view_entry_hourly_hour_idx on page_view_entry_hourly (hour);

create function analytics_entry_paths_per_hour() returns integer
language sql immutable as $$ select 100 $$;

create function analytics_entry_paths_open_hour() returns integer
language sql immutable as $$ select 1000 $$;

-- How many paths the UTC hour starting at `hour` may keep now: more while it is open.
create function analytics_entry_paths_kept(hour timestamptz) returns integer
language sql stable as $$
    select case when hour > analytics_watermark() - interval '1 hour'
        then analytics_entry_paths_open_hour() else analytics_entry_paths_per_hour() end
$$;

-- Adds the deltas (visits and bounces, one element per visit and sign) to their rows: the path's row
-- of the hour when it has one; a new row while the hour has room (analytics_entry_paths_kept), for a
-- path gaining visits; else the hour's '(other)'. A net loss only updates a row that exists, as the
-- quarters' counts do (page_view_visits_count_removed): a row the retention purged first, or one a
-- concurrent statement deleted, is not written back.
-- A path longer than the ingest stores now (2000 bytes, MAX_DIMENSION_BYTES; a visit of a view stored
-- before it bounded them) counts in '(other)' too: a btree entry holds at most 2704 bytes.
create function analytics_count_entries(
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

-- The visits a statement wrote (+1) and replaced or deleted (-1), counted in the UTC hour they started.
create function page_view_visits_entries_added() returns trigger
language plpgsql as $$
begin
    perform analytics_count_entries(
        array_agg(v.site_id), array_agg(date_trunc('hour', v.started_at, 'UTC')), array_agg(v.entry_path),
        array_agg(1), array_agg((v.pageviews = 1)::integer)
    ) from added v;
    return null;
end
$$;

create function page_view_visits_entries_changed() returns trigger
language plpgsql as $$
begin
    perform analytics_count_entries(
        array_agg(c.site_id), array_agg(c.hour), array_agg(c.entry_path), array_agg(c.visits), array_agg(c.bounces)
    ) from (
        select v.site_id, date_trunc('hour', v.started_at, 'UTC') as hour, v.entry_path, 1 as visits,
            (v.pageviews = 1)::integer as bounces
        from added v
        union all
        select v.site_id, date_trunc('hour', v.started_at, 'UTC'), v.entry_path, -1, -(v.pageviews = 1)::integer
        from removed v
    ) c;
    return null;
end
$$;

create function page_view_visits_entries_removed() returns trigger
language plpgsql as $$
begin
    perform analytics_count_entries(
        array_agg(v.site_id), array_agg(date_trunc('hour', v.started_at, 'UTC')), array_agg(v.entry_path),
        array_agg(-1), array_agg(-(v.pageviews = 1)::integer)
    ) from removed v;
    return null;
end
$$;

create trigger page_view_visits_entries_added after insert on page_view_visits
referencing new table as added
for each statement execute function page_view_visits_entries_added();
create trigger page_view_visits_entries_changed after update on page_view_visits
referencing old table as removed new table as added
for each statement execute function page_view_visits_entries_changed();
create trigger page_view_visits_entries_removed after delete on page_view_visits
referencing old table as removed
for each statement execute function page_view_visits_entries_removed();

-- migrate:down
set local lock_timeout = '3s';
drop trigger page_view_visits_entries_removed on page_view_visits;
drop trigger page_view_visits_entries_changed on page_view_visits;
drop trigger page_view_visits_entries_added on page_view_visits;
drop function page_view_visits_entries_removed();
drop function page_view_visits_entries_changed();
drop function page_view_visits_entries_added();
drop function analytics_count_entries(bigint[], timestamptz[], text[], integer[], integer[]);
drop function analytics_entry_paths_kept(timestamptz);
drop function analytics_entry_paths_open_hour();
drop function analytics_entry_paths_per_hour();
drop table page_view_entry_hourly;
