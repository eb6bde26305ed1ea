-- migrate:up transaction:false
-- The quarters of 20261207050000 for the visitors there are, one site's UTC day per transaction, under
-- the rollup's lock (a rollup run skips while it is held, and none adds to the day being filled): each
-- visitor's quarters are read again from its visitor rows, and the day's hour_visitors counted again
-- from them. What the fold counted before a day's turn is replaced, so running it again fills again.
-- A visitor whose rows the retention purged before its day's row (the purges go table by table)
-- counts as seen in its first and last quarter hours only. The only statement of this section (a block
-- that commits: see 20261206180000).
do $$
declare
    part record;
begin
    for part in select distinct site_id, day from page_view_daily_visitors order by 1, 2 loop
        perform pg_advisory_xact_lock(hashtext('analytics.rollup'));
        update page_view_daily_visitors d set quarters = s.quarters
        from (
            select v.visitor_id, bit_or(analytics_day_quarters_seen(v.hour, v.seen_quarters)) as quarters
            from page_view_hourly_visitors v
            where v.site_id = part.site_id and v.hour >= part.day and v.hour < part.day + interval '24 hours'
            group by v.visitor_id
        ) s
        where d.site_id = part.site_id and d.day = part.day and d.visitor_id = s.visitor_id;
        update page_view_daily_visitors d
        set quarters = set_bit(set_bit(repeat('0', 96)::bit(96), d.first_quarter, 1), d.last_quarter, 1)
        where d.site_id = part.site_id and d.day = part.day and d.quarters is null;
        update page_view_quarters q set hour_visitors = 0
        where q.site_id = part.site_id and q.quarter >= part.day and q.quarter < part.day + interval '24 hours'
            and q.hour_visitors <> 0;
        insert into page_view_quarters (site_id, quarter, hour_visitors)
        select part.site_id, part.day + c.quarter * interval '15 minutes', count(*)
        from page_view_daily_visitors d
        cross join generate_series(1, 92) as c (quarter)
        where d.site_id = part.site_id and d.day = part.day and c.quarter % 4 <> 0
            and analytics_seen_in_hour(d.quarters, c.quarter)
        group by c.quarter
        on conflict (site_id, quarter) do update set hour_visitors = excluded.hour_visitors;
        commit;
    end loop;
end
$$;

-- migrate:down
-- Nothing to undo: the quarters go with 20261207050000's down.
select 1;
