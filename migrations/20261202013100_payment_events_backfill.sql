-- migrate:up
-- The rows written before 20261202013000 get their ids (in arrival order), and the payments that
-- paid an order get their payment id back from the order's history ("payment <id> received") and
-- the order's amount and currency (only an exact amount pays): a redelivery of such a payment under
-- a new event id is then recognised as the same money. Row locks on old rows only: the webhook's new
-- rows are not held up. Nothing else is derived from old rows: an old "ignored" cannot be told
-- from a redelivery, and old "expired"/"mismatch" rows, refunded or not by hand, record no payment
-- to return (the refunds due list only payments recorded with one).
update payment_events pe
set id = numbered.id
from (
    select old.event_id, nextval('payment_events_id_seq') as id
    from (select event_id from payment_events where id is null order by received_at, event_id) old
) numbered
where pe.event_id = numbered.event_id;

update payment_events pe
set payment_id = substring(oe.reason from '^payment (.+) received$'),
    amount = o.total,
    currency = o.currency
from order_events oe
join orders o on o.id = oe.order_id
where pe.outcome = 'paid'
  and pe.payment_id is null
  and oe.order_id = pe.order_id
  and oe.to_status = 'paid'
  and oe.reason ~ '^payment .+ received$';

-- migrate:down
update payment_events set payment_id = null, amount = null, currency = null
where outcome = 'paid' and refunded_at is null;
