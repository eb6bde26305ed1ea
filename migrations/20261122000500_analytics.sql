-- migrate:up
create table sites (
    id bigint generated always as identity primary key,
    owner_id bigint not null references users (id) on delete cascade,
    domain text not null check (length(domain) between 1 and 253),
    ingest_key text not null unique check (length(ingest_key) between 16 and 64),
    timezone text not null default 'UTC',
    created_at timestamptz not null default now()
);

create index sites_owner_idx on sites (owner_id, id);

-- Raw page views, one partition per UTC day (created ahead and dropped past retention by cron).
-- No raw IP or user agent is stored: visitor_id is a keyed hash with a salt that rotates daily.
create table page_views (
    site_id bigint not null,
    ts timestamptz not null,
    received_at timestamptz not null default now(),
    event_id uuid,
    visitor_id bigint not null,
    path text not null,
    title text not null default '',
    referrer_host text not null default '',
    referrer_source text not null default '',
    utm_source text not null default '',
    utm_medium text not null default '',
    utm_campaign text not null default '',
    screen_width integer,
    device text not null,
    browser text not null,
    os text not null,
    is_bot boolean not null default false
) partition by range (ts);

create index page_views_site_ts_idx on page_views (site_id, ts);

-- Retried sends carry the same client event id: the id is claimed here in the same transaction as
-- the COPY, so a view is stored once however often it is sent. Purged after two days (events older
-- than 24 h are clamped and cannot be retried usefully past that).
create table page_view_event_ids (
    site_id bigint not null,
    event_id uuid not null,
    seen_at timestamptz not null default now(),
    primary key (site_id, event_id)
);

create index page_view_event_ids_seen_idx on page_view_event_ids (seen_at);

-- The daily salt of the visitor hash.
create table analytics_salts (
    day date primary key,
    salt bytea not null
);

create or replace function ensure_page_view_partitions(from_day date, days integer) returns integer
language plpgsql as $$
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

select ensure_page_view_partitions((now() at time zone 'UTC')::date - 2, 6);

-- migrate:down
drop function ensure_page_view_partitions(date, integer);
drop table analytics_salts;
drop table page_view_event_ids;
drop table page_views;
drop table sites;
