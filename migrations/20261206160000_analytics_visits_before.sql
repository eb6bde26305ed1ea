-- migrate:up

-- A ranked report's walk reads every page as of its first (the views received before it): the entry
-- pages' counts come from the visits, so their merge with the views not rolled up yet stops at that
-- instant too. analytics_visits is the same with no bound: it now says so in one line (same signature
-- and answers: the previous release's reports read it). No table touched: safe while that release runs.
create function analytics_visits_before(
    site bigint, range_from timestamptz, range_to timestamptz, received_before timestamptz
)
returns setof page_view_visits
language sql stable as $$
    with merged as materialized (
        select * from analytics_merged_visits(site, analytics_watermark(), received_before)
    )
    select m.* from merged m
    where m.started_at >= range_from and m.started_at < range_to
    union all
    select v.* from page_view_visits v
    where v.site_id = site and v.started_at >= range_from and v.started_at < range_to
        and not exists (
            select 1 from merged m
            where m.visitor_id = v.visitor_id and v.started_at >= m.started_at and v.started_at <= m.last_seen_at
        )
$$;

create or replace function analytics_visits(site bigint, range_from timestamptz, range_to timestamptz)
returns setof page_view_visits
language sql stable as $$
    select * from analytics_visits_before(site, range_from, range_to, 'infinity')
$$;

-- migrate:down

create or replace function analytics_visits(site bigint, range_from timestamptz, range_to timestamptz)
returns setof page_view_visits
language sql stable as $$
    with merged as materialized (
        select * from analytics_merged_visits(site, analytics_watermark(), 'infinity')
    )
    select m.* from merged m
    where m.started_at >= range_from and m.started_at < range_to
    union all
    select v.* from page_view_visits v
    where v.site_id = site and v.started_at >= range_from and v.started_at < range_to
        and not exists (
            select 1 from merged m
            where m.visitor_id = v.visitor_id and v.started_at >= m.started_at and v.started_at <= m.last_seen_at
        )
$$;

drop function analytics_visits_before(bigint, timestamptz, timestamptz, timestamptz);
