-- migrate:up transaction:false
-- The rollups' daily retention (ReportService.purge_rollups, PurgeHourlyRollups) deletes the hours
-- before the retention's first kept day in chunks, oldest first: the primary key starts with site_id,
-- so without this index every chunk read the whole table, and once a backlog made one DELETE outlast
-- the statement timeout the purge rolled back, every day again. A B-tree, not a BRIN: a chunk is
-- `order by hour limit`, which a B-tree answers by reading about that many entries, where a BRIN's
-- bitmap scan sorts every expired row and reads again the pages of the rows earlier chunks deleted.
-- hour never changes (the rollup's upserts stay HOT) and its duplicates are deduplicated (small).
-- Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists page_view_hourly_hour_idx on page_view_hourly (hour);

-- migrate:down transaction:false
drop index concurrently if exists page_view_hourly_hour_idx;
