-- migrate:up transaction:false
-- The daily purge of event-id claims walks the table a page window at a time (a TID range scan,
-- sql/queries/pageviews.sql PurgeEventIds) and reads no index: the BRIN index on seen_at that served
-- the earlier purge is only a cost on every claim the ingest inserts. Dropped concurrently: a plain
-- DROP INDEX queues for ACCESS EXCLUSIVE behind any open reader of the table, and every ingest
-- write queues behind it.
drop index concurrently if exists page_view_event_ids_seen_brin;

-- migrate:down transaction:false
create index concurrently if not exists page_view_event_ids_seen_brin on page_view_event_ids using brin (seen_at);
