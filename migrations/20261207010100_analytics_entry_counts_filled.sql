-- migrate:up transaction:false
-- The entry counts of 20261207010000 for the visits there are, one site's UTC day per transaction,
-- under the rollup's lock (a rollup run skips while it is held, and none adds to the day being
-- counted): each hour's paths, most visits first, the first analytics_entry_paths_kept(hour) with a
-- row (what an open hour keeps, or a closed hour is folded to) and the rest (and any longer than 2000
-- bytes) in '(other)', as the triggers and the rollup's fold count them. What the triggers counted
-- before a day's turn is replaced, so running it again counts again. The only statement of this
-- section (a block that commits: see 20261206180000).
do $$
declare
    part record;
begin
    for part in
        select distinct site_id, date_trunc('day', started_at, 'UTC') as day from page_view_visits
        order by 1, 2
    loop
        perform pg_advisory_xact_lock(hashtext('analytics.rollup'));
        -- the purges delete visits without the rollup's lock: one deleting a visit the day's count
        -- being replaced holds would lower a row this transaction deletes, and the new count keep it
        lock table page_view_visits in share mode;
        delete from page_view_entry_hourly
        where site_id = part.site_id and hour >= part.day and hour < part.day + interval '24 hours';
        insert into page_view_entry_hourly (site_id, hour, entry_path, visits, bounces)
        select part.site_id, r.hour,
            case when r.entry_path <> '(other)' and r.rank <= analytics_entry_paths_kept(r.hour)
                then r.entry_path else '(other)' end,
            sum(r.visits), sum(r.bounces)
        from (
            select p.*, row_number() over (
                partition by p.hour, p.entry_path = '(other)' order by p.visits desc, p.entry_path
            ) as rank
            from (
                select date_trunc('hour', v.started_at, 'UTC') as hour,
                    case when octet_length(v.entry_path) <= 2000 then v.entry_path else '(other)' end as entry_path,
                    count(*)::integer as visits,
                    count(*) filter (where v.pageviews = 1)::integer as bounces
                from page_view_visits v
                where v.site_id = part.site_id and v.started_at >= part.day
                    and v.started_at < part.day + interval '24 hours'
                group by 1, 2
            ) p
        ) r
        group by 1, 2, 3;
        commit;
    end loop;
end
$$;

-- migrate:down
-- Nothing to undo: the counts go with 20261207010000's down.
select 1;
