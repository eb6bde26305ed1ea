-- migrate:up transaction:false
-- The daily monitoring report's money (RevenueBetween: the transitions to paid in its period;
-- RefundedAfterPaymentBetween: from paid to cancelled) read every order event ever recorded (nothing
-- deletes them): this index holds the transitions to paid or cancelled only (placements,
-- reservations, expiries and fulfilments are not in it), by time, and each statement's status is a
-- filter within the period's range. The statements' `to_status = 'paid'` / `= 'cancelled'` imply its
-- predicate, so the generic plan uses it too. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists order_events_settled_created_idx
    on order_events (created_at) where to_status in ('paid', 'cancelled');

-- migrate:down transaction:false
drop index concurrently if exists order_events_settled_created_idx;
