-- migrate:up
-- Every process now makes sure of the day's partitions when it starts, and the sink when a write
-- finds one missing (app.domains.pageviews): processes starting together (a deploy) must not fail
-- on each other's "create table" of the same day. One maker at a time, under a transaction-level
-- advisory lock; the next finds the partitions made.
set local lock_timeout = '3s';
create or replace function ensure_page_view_partitions(from_day date, days integer) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    day date;
    partition_name text;
    created integer := 0;
begin
    perform pg_advisory_xact_lock(hashtextextended('page_view_partitions', 0));
    for i in 0..days - 1 loop
        day := from_day + i;
        partition_name := format('page_views_%s', to_char(day, 'YYYYMMDD'));
        if to_regclass(partition_name) is null then
            execute format('create table %I (like page_views including all)', partition_name);
            execute format(
                'alter table page_views attach partition %I for values from (%L) to (%L)',
                partition_name, day::timestamp at time zone 'UTC', (day + 1)::timestamp at time zone 'UTC'
            );
            created := created + 1;
        end if;
    end loop;
    return created;
end;
$$;

-- migrate:down
create or replace function ensure_page_view_partitions(from_day date, days integer) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    day date;
    partition_name text;
    created integer := 0;
begin
    for i in 0..days - 1 loop
        day := from_day + i;
        partition_name := format('page_views_%s', to_char(day, 'YYYYMMDD'));
        if to_regclass(partition_name) is null then
            execute format('create table %I (like page_views including all)', partition_name);
            execute format(
                'alter table page_views attach partition %I for values from (%L) to (%L)',
                partition_name, day::timestamp at time zone 'UTC', (day + 1)::timestamp at time zone 'UTC'
            );
            created := created + 1;
        end if;
    end loop;
    return created;
end;
$$;
