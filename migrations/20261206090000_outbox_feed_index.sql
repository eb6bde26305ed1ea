-- migrate:up transaction:false
-- The feed's rows of the outbox in id order: its recovery cron (SettledFeedOutbox, every minute)
-- reads them after its mark, and the mark moves only past the feed's rows. Without it each run read
-- every other row after the feed's last one (order reservations, alert deliveries, purges: up to the
-- whole retained outbox) on the primary key, a filter throwing them away. Partial: only the feed's
-- rows pay for it. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists outbox_feed_idx on outbox (id) where task = 'record_activity';

-- migrate:down transaction:false
drop index concurrently if exists outbox_feed_idx;
