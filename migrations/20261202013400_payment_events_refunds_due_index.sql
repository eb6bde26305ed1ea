-- migrate:up transaction:false
-- The refunds due, newest first (GET /api/admin/payments/refunds-due, keyset by id): the predicate
-- is ListRefundsDue's. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists payment_events_refunds_due_idx on payment_events (id)
where outcome in ('refund-due', 'expired', 'mismatch') and refunded_at is null and payment_id is not null;

-- migrate:down transaction:false
drop index concurrently if exists payment_events_refunds_due_idx;
