-- migrate:up transaction:false
-- A payment id recorded before (a redelivery under a new event id) is not a second payment: one
-- lookup per payment.succeeded. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists payment_events_payment_idx on payment_events (payment_id)
where payment_id is not null;

-- migrate:down transaction:false
drop index concurrently if exists payment_events_payment_idx;
