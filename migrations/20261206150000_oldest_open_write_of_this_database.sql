-- migrate:up
-- The oldest transaction still writing is looked for in this database only. pg_stat_activity lists
-- the sessions of every database of the server, and an open transaction of another database (another
-- application sharing the server; another test worker's database) held the feed's recovery back for
-- as long as it stayed open, though it can write no row of this database's outbox (a flaky test
-- found it).
create or replace function oldest_open_write_started_at() returns timestamptz
language sql stable as $$
    select min(xact_start) from pg_stat_activity
    where backend_xid is not null and datname = current_database()
$$;

-- migrate:down
create or replace function oldest_open_write_started_at() returns timestamptz
language sql stable as $$
    select min(xact_start) from pg_stat_activity where backend_xid is not null
$$;
