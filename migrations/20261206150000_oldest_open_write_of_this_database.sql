-- migrate:up
-- The oldest transaction still writing is looked for in this database only. pg_stat_activity lists
-- the sessions of every database of the server, and an open transaction of another database (another
-- application sharing the server; another test worker's database) held the feed's recovery back for
-- as long as it stayed open, though it can write no row of this database's outbox (a flaky test
-- found it).
--
-- A session of another role is listed, but without its xact_start unless the caller may read every
-- session's statistics (pg_read_all_stats; the deploy's app role, NOINHERIT, may not): min() skipped
-- it, and a transaction of the owner role (a migration, an operator's psql) did not hold the walk
-- back (a review). Such a session now holds it back for as long as it writes (-infinity).
create or replace function oldest_open_write_started_at() returns timestamptz
language sql stable as $$
    select case when bool_or(xact_start is null) then '-infinity'::timestamptz else min(xact_start) end
    from pg_stat_activity
    where backend_xid is not null and datname = current_database()
$$;

-- migrate:down
create or replace function oldest_open_write_started_at() returns timestamptz
language sql stable as $$
    select min(xact_start) from pg_stat_activity where backend_xid is not null
$$;
