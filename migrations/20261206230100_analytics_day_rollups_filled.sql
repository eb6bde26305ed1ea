-- migrate:up transaction:false
-- The counts of 20261206230000 for the rollups there are, one site's UTC day per transaction, under
-- the rollup's lock (a rollup run skips while it is held, and none adds to the day being counted): the
-- day's visitors, their first and last quarters, the hours' visitors and the visits per quarter hour
-- are counted again from the visitor rows and the visits. What the triggers counted before a day's turn
-- is replaced, so running it again counts again. The only statement of this section (a block that
-- commits: see 20261206180000).
do $$
declare
    part record;
begin
    for part in
        select site_id, date_trunc('day', hour, 'UTC') as day from page_view_hourly_visitors
        union
        select site_id, date_trunc('day', started_at, 'UTC') from page_view_visits
        order by 1, 2
    loop
        perform pg_advisory_xact_lock(hashtext('analytics.rollup'));
        delete from page_view_daily_visitors where site_id = part.site_id and day = part.day;
        delete from page_view_quarters
        where site_id = part.site_id and quarter >= part.day and quarter < part.day + interval '24 hours';
        insert into page_view_daily_visitors (site_id, day, visitor_id, first_quarter, last_quarter)
        select v.site_id, part.day, v.visitor_id,
            min(analytics_first_quarter_seen(v.hour, v.seen_quarters)),
            max(analytics_last_quarter_seen(v.hour, v.seen_quarters))
        from page_view_hourly_visitors v
        where v.site_id = part.site_id and v.hour >= part.day and v.hour < part.day + interval '24 hours'
        group by v.site_id, v.visitor_id;
        insert into page_view_quarters (
            site_id, quarter, visitors_first, visitors_last, visits, bounces, visit_pageviews
        )
        select part.site_id, c.quarter, sum(c.firsts), sum(c.lasts), sum(c.visits), sum(c.bounces),
            sum(c.visit_pageviews)
        from (
            select part.day + d.first_quarter * interval '15 minutes' as quarter, 1 as firsts, 0 as lasts,
                0 as visits, 0 as bounces, 0 as visit_pageviews
            from page_view_daily_visitors d where d.site_id = part.site_id and d.day = part.day
            union all
            select part.day + d.last_quarter * interval '15 minutes', 0, 1, 0, 0, 0
            from page_view_daily_visitors d where d.site_id = part.site_id and d.day = part.day
            union all
            select analytics_quarter_start(v.started_at), 0, 0, 1, (v.pageviews = 1)::integer, v.pageviews
            from page_view_visits v
            where v.site_id = part.site_id and v.started_at >= part.day
                and v.started_at < part.day + interval '24 hours'
        ) c
        group by c.quarter;
        update page_view_hourly h
        set visitors = (
            select count(*) from page_view_hourly_visitors v where v.site_id = h.site_id and v.hour = h.hour
        )
        where h.site_id = part.site_id and h.hour >= part.day and h.hour < part.day + interval '24 hours';
        commit;
    end loop;
end
$$;

-- migrate:down
-- Nothing to undo: the counts go with 20261206230000's down.
select 1;
