-- migrate:up

-- What a payment.succeeded took (so that it can be returned from our data alone), and whether an
-- administrator has returned it. Every processed payment.succeeded stores its payment id, amount
-- and currency; other event types leave them null.
alter table payment_events
    add column id bigint not null generated always as identity,
    add column payment_id text check (length(payment_id) between 1 and 255),
    add column amount numeric check (amount >= 0),
    add column currency text check (currency ~ '^[A-Z]{3}$'),
    add column refunded_at timestamptz,
    add column refunded_by bigint references users (id) on delete set null,
    add constraint payment_events_payment_complete
        check ((payment_id is null) = (amount is null) and (amount is null) = (currency is null));

-- The payments that paid an order before this migration: their payment id is in the order's
-- history ("payment <id> received"), their amount and currency are the order's (only an exact
-- amount pays). A redelivery of that payment id under a new event id is then recognised.
update payment_events pe
set payment_id = substring(oe.reason from '^payment (.+) received$'),
    amount = o.total,
    currency = o.currency
from order_events oe
join orders o on o.id = oe.order_id
where pe.outcome = 'paid'
  and oe.order_id = pe.order_id
  and oe.to_status = 'paid'
  and oe.reason ~ '^payment .+ received$';

-- Only a payment.succeeded looked its order up, and a cancelled or rejected order was never paid:
-- an event recorded against one of them took money that must go back (it was answered "ignored").
update payment_events pe
set outcome = 'refund-due'
from orders o
where pe.outcome = 'ignored' and o.id = pe.order_id and o.status in ('cancelled', 'rejected');

-- A payment id recorded before (a redelivery under a new event id) is not a second payment.
create index payment_events_payment_idx on payment_events (payment_id) where payment_id is not null;

-- The refunds due, newest first (GET /api/admin/payments/refunds-due, keyset by id).
create index payment_events_refunds_due_idx on payment_events (id)
where outcome in ('refund-due', 'expired', 'mismatch') and refunded_at is null;

-- migrate:down
drop index payment_events_refunds_due_idx;
drop index payment_events_payment_idx;
update payment_events set outcome = 'ignored' where outcome = 'refund-due';
alter table payment_events
    drop constraint payment_events_payment_complete,
    drop column refunded_by,
    drop column refunded_at,
    drop column currency,
    drop column amount,
    drop column payment_id,
    drop column id;
