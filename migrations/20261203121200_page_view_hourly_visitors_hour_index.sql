-- migrate:up transaction:false
-- The rollups' daily retention in chunks (PurgeHourlyVisitors), oldest hour first: the primary key
-- starts with site_id, so without this index every chunk read the whole table, the largest of the
-- rollups (a row per visitor and hour). A B-tree, as for page_view_hourly (20261203121000): a chunk
-- of 10,000 reads about 10,000 entries, where a BRIN's bitmap scan (no order: it would sort every
-- expired row) read again, chunk after chunk, every heap page of the rows earlier chunks deleted
-- (measured on 3M rows: 1,900 pages by the 30th chunk). Hour repeats, so the index is deduplicated:
-- 19 MB for 3M rows, where the primary key takes 205 MB. The rollup's inserts (on conflict do
-- nothing) add one entry each near the index's right end (measured: 100,000 inserts of new hours,
-- 0.8 s without it, 1.0 s with it; a busy hour's rollup pays that fraction of a second).
-- Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists page_view_hourly_visitors_hour_idx
    on page_view_hourly_visitors (hour);

-- migrate:down transaction:false
drop index concurrently if exists page_view_hourly_visitors_hour_idx;
