-- migrate:up

-- Partition upkeep must never hold up the ingest. CREATE TABLE ... PARTITION OF and DROP TABLE
-- of a partition take ACCESS EXCLUSIVE on page_views: queued behind any open reader (a report, the
-- rollup), they made every insert queue behind them.
--
-- Creating: the day's table is made standalone with the parent's shape, then attached. ATTACH
-- PARTITION takes SHARE UPDATE EXCLUSIVE on page_views (PostgreSQL >= 12), which neither readers
-- nor inserts conflict with. The new table is empty: its check scan and index builds are instant.
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

-- Dropping still needs ACCESS EXCLUSIVE on page_views (DETACH ... CONCURRENTLY cannot run in a
-- function). So each drop waits at most lock_timeout (inserts queue behind it that long at most);
-- a partition still busy then is left for the next run and counted as busy.
drop function drop_page_view_partitions(date);

create function drop_page_view_partitions(before date, out dropped integer, out busy integer)
language plpgsql security definer set search_path = public, pg_temp set lock_timeout = '200ms' as $$
declare
    partition record;
begin
    dropped := 0;
    busy := 0;
    for partition in
        select c.relname
        from pg_inherits i
        join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'page_views'::regclass and c.relname ~ '^page_views_[0-9]{8}$'
            and to_date(substr(c.relname, 12), 'YYYYMMDD') + 1 <= before
        order by c.relname
    loop
        begin
            execute format('drop table %I', partition.relname);
            dropped := dropped + 1;
        exception when lock_not_available then
            busy := busy + 1;
        end;
    end loop;
end;
$$;

-- migrate:down

create or replace function ensure_page_view_partitions(from_day date, days integer) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    day date;
    created integer := 0;
begin
    for i in 0..days - 1 loop
        day := from_day + i;
        if to_regclass(format('page_views_%s', to_char(day, 'YYYYMMDD'))) is null then
            execute format(
                'create table page_views_%s partition of page_views for values from (%L) to (%L)',
                to_char(day, 'YYYYMMDD'), day::timestamp at time zone 'UTC', (day + 1)::timestamp at time zone 'UTC'
            );
            created := created + 1;
        end if;
    end loop;
    return created;
end;
$$;

drop function drop_page_view_partitions(date);

create function drop_page_view_partitions(before date) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
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
