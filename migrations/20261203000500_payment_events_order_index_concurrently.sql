-- migrate:up transaction:false
-- A paid order's payment events (PayingPaymentKnown, PaidWithoutPaymentId, QueueRefundOfPayingPayment,
-- the last under the order's lock while an administrator cancels it): without it each scanned every
-- payment event. A plain index on order_id: PaidWithoutPaymentId looks at 'refund-due' rows too, so a
-- partial one on outcome = 'paid' would not serve it. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists payment_events_order_idx on payment_events (order_id);

-- migrate:down transaction:false
drop index concurrently if exists payment_events_order_idx;
