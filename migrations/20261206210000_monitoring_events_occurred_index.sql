-- migrate:up transaction:false
-- The monitoring retention's events (PurgeEventsBefore) by their time: without it, the last chunk
-- of every hourly purge (the one that finds nothing more to delete, which is every run once the
-- backlog is gone) read the whole table, 500,000 events of about 1.3 KB in 0.5 s and 650 MB of
-- buffers, every hour. Its write cost is bounded as the table is (MONITORING_SAMPLES_PER_GROUP).
-- Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists monitoring_events_occurred_idx on monitoring_events (occurred_at);

-- migrate:down transaction:false
drop index concurrently if exists monitoring_events_occurred_idx;
