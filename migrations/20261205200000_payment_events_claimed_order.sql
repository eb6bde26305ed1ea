-- migrate:up
-- The order a payment event named, as the provider sent it: order_id (a foreign key) is null for an
-- order that does not exist, and the refunds due then lost which order the customer meant to pay.
-- No foreign key: it keeps what was claimed. Nullable, no default: adding it rewrites nothing, but
-- it takes the table's lock: behind a long reader it would hold every webhook's insert (CONVENTIONS).
set local lock_timeout = '3s';
alter table payment_events add column claimed_order_id bigint;

-- migrate:down
set local lock_timeout = '3s';
alter table payment_events drop column claimed_order_id;
