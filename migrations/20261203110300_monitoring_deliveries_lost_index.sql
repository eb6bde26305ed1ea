-- migrate:up transaction:false
-- The deliveries of a chat that ended 'uncertain' or 'failed' after its told_through (LostDeliveries,
-- after every delivered message): without it the sender reads every delivery of the table. Partial:
-- nearly every delivery is 'sent'. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists monitoring_deliveries_lost_idx
    on monitoring_deliveries (chat_id, id) where status in ('uncertain', 'failed');

-- migrate:down transaction:false
drop index concurrently if exists monitoring_deliveries_lost_idx;
