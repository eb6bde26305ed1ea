#!/bin/sh
# Runs once, when the postgres container initialises an empty data directory
# (/docker-entrypoint-initdb.d), as the image's superuser (POSTGRES_USER).
#
# Two roles, neither a superuser:
# - the owner (POSTGRES_OWNER_USER): owns the database and the public schema; `migrate` runs dbmate
#   as this role, so every table, sequence and function belongs to it;
# - the app (POSTGRES_APP_USER): what `api` and `worker` connect as. It owns nothing and may only
#   read and write rows (DML), use sequences and call functions: the grants below, made default for
#   everything the owner creates later, so each migration's new tables are covered.
# The superuser is used for nothing else.
set -eu

: "${POSTGRES_OWNER_USER:?}" "${POSTGRES_OWNER_PASSWORD:?}" "${POSTGRES_APP_USER:?}" "${POSTGRES_APP_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v owner="$POSTGRES_OWNER_USER" -v owner_password="$POSTGRES_OWNER_PASSWORD" \
  -v app="$POSTGRES_APP_USER" -v app_password="$POSTGRES_APP_PASSWORD" \
  -v db="$POSTGRES_DB" <<'SQL'
create role :"owner" login nosuperuser nocreatedb nocreaterole noreplication password :'owner_password';
create role :"app" login nosuperuser nocreatedb nocreaterole noreplication noinherit password :'app_password';

alter database :"db" owner to :"owner";
alter schema public owner to :"owner";
revoke all on database :"db" from public;
revoke create on schema public from public;
grant connect, temporary on database :"db" to :"app";
grant usage on schema public to :"app";

alter default privileges for role :"owner" in schema public
  grant select, insert, update, delete on tables to :"app";
alter default privileges for role :"owner" in schema public
  grant usage, select on sequences to :"app";
alter default privileges for role :"owner" in schema public
  grant execute on functions to :"app";

-- When every other session's transaction began (pg_stat_activity.xact_start): the feed's recovery
-- passes no outbox row a transaction still open may yet commit below (oldest_open_write_started_at).
-- Without it the app sees other roles' sessions without their start, and any of them writing (a
-- migration, an operator's psql, an autoanalyze) holds the recovery back until it ends. Read-only
-- statistics; `with inherit true` because the role is NOINHERIT (PostgreSQL 16).
grant pg_read_all_stats to :"app" with inherit true;
SQL
