-- migrate:up
-- The order a payment event named, as the provider sent it: order_id (a foreign key) is null for an
-- order that does not exist, and the refunds due then lost which order the customer meant to pay.
-- No foreign key: it keeps what was claimed. Nullable, no default: adding it rewrites nothing.
alter table payment_events add column claimed_order_id bigint;

-- migrate:down
alter table payment_events drop column claimed_order_id;
