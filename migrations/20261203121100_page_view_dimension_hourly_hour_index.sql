-- migrate:up transaction:false
-- The rollups' daily retention in chunks (PurgeDimensionRollups), oldest hour first: the primary key
-- starts with site_id, so without this index every chunk read the whole table. A B-tree, as for
-- page_view_hourly (20261203121000): exact for `order by hour limit`, untouched by the rollup's updates
-- (hour never changes), small (hour repeats: deduplicated). Concurrently, one index per file (see
-- 20261202010500).
create index concurrently if not exists page_view_dimension_hourly_hour_idx
    on page_view_dimension_hourly (hour);

-- migrate:down transaction:false
drop index concurrently if exists page_view_dimension_hourly_hour_idx;
