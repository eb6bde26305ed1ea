-- migrate:up

-- The app connects as a role that owns no tables and may not create or drop them (production:
-- deploy/postgres/10-roles.sh), so the partition functions run as their owner. The fixed search_path
-- keeps a security-definer function from resolving names through a schema its caller controls.
alter function ensure_page_view_partitions(date, integer) security definer set search_path = public, pg_temp;
alter function drop_page_view_partitions(date) security definer set search_path = public, pg_temp;

-- migrate:down

alter function ensure_page_view_partitions(date, integer) security invoker reset search_path;
alter function drop_page_view_partitions(date) security invoker reset search_path;
