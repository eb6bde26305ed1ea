-- migrate:up transaction:false
-- The entry counts of 20261207010000 for the visits there are, one site's UTC day per transaction,
-- under the rollup's lock (a rollup run skips while it is held, and none adds to the day being
-- counted): the day's rows are deleted and its visits counted again by the triggers' own rule
-- (analytics_count_entries: in one statement, most visits first, each hour keeping as many paths as
-- analytics_entry_paths_kept allows it, the rest in '(other)'). What the triggers counted before a
-- day's turn is replaced, so running it again counts again. The only statement of this section (a
-- block that commits: see 20261206180000).
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
        perform analytics_count_entries(
            array_agg(v.site_id), array_agg(date_trunc('hour', v.started_at, 'UTC')), array_agg(v.entry_path),
            array_agg(1), array_agg((v.pageviews = 1)::integer)
        )
        from page_view_visits v
        where v.site_id = part.site_id and v.started_at >= part.day
            and v.started_at < part.day + interval '24 hours';
        commit;
    end loop;
end
$$;

-- migrate:down
-- Nothing to undo: the counts go with 20261207010000's down.
select 1;
