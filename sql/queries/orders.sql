-- name: LockUser :one
-- Serialises one user's order placements (the open-order limit is checked under this lock); NO KEY
-- so that inserts referencing the user (idempotency keys, orders) are not blocked by it. Whether the
-- account is still active, read under the lock: a placement authenticated before a deactivation
-- committed waited for it here, then placed the order all the same.
select is_active from users where id = @id for no key update;

-- name: CountOpenOrders :one
-- A user's open orders: pending, or reserved and still in their window (a lapsed reservation holds
-- nothing for the buyer any more, whether or not the expiry cron has released its stock yet). That
-- user's range of orders_open_user_idx (this predicate implies the index's).
select count(*) from orders
where user_id = @user_id
  and (status = 'pending' or (status = 'reserved' and (reserved_until is null or reserved_until >= now())));

-- name: CreateOrder :one
insert into orders (user_id, total, currency) values (@user_id, @total, @currency)
returning *;

-- name: AddOrderItems :many
-- Every line of a new order in one statement, in product-id order; the lines as stored.
insert into order_items (order_id, product_id, quantity, unit_price)
select @order_id, line.product_id, line.quantity, line.unit_price
from (
    select unnest(@product_ids::bigint[]) as product_id,
           unnest(@quantities::integer[]) as quantity,
           unnest(@unit_prices::numeric[]) as unit_price
) line
order by line.product_id
returning *;

-- name: GetOrder :one
select * from orders where id = @id;

-- name: GetOrderForUpdate :one
select * from orders where id = @id for update;

-- name: GetOrderItems :many
select * from order_items where order_id = @order_id order by product_id;

-- name: GetItemsForOrders :many
select * from order_items where order_id = any(@order_ids::bigint[]) order by order_id, product_id;

-- name: SetOrderStatus :one
update orders
set status = @status,
    reserved_until = sqlc.narg(reserved_until),
    shortfall = sqlc.narg(shortfall),
    updated_at = now()
where id = @id
returning *;

-- name: RecordOrderEvent :exec
insert into order_events (order_id, from_status, to_status, reason, actor_id)
values (@order_id, sqlc.narg(from_status), @to_status, @reason, sqlc.narg(actor_id));

-- name: GetOrderEvents :many
select * from order_events where order_id = @order_id order by id;

-- name: ListUserOrders :many
-- One user's orders, keyset by id, newest first (before_id = max bigint for the first page): that
-- user's range of orders_user_idx. The lists are one statement per shape, chosen by the caller, not
-- one with optional user and status: a prepared statement's generic plan, serving every
-- combination, walked all orders backwards on orders_pkey with the user as a filter; and with the
-- user given, an optional status was a filter over the user's whole history (100,000 rows read for
-- an empty page of a busy account). The user is a range of one value, as the status is in
-- ListOrdersWithStatus: with an equality the planner drops user_id from the order, and a custom plan
-- for a busy account (a large share of all orders) walked orders_pkey backwards with the user as a
-- filter, every newer order of the shop when the account's orders are old ones.
select * from orders
where user_id >= @user_id and user_id <= @user_id
  and id < @before_id
order by user_id desc, id desc
limit @row_limit;

-- name: ListUserOrdersWithStatus :many
-- One user's orders in one status, newest first: that (user, status) range of
-- orders_user_status_idx, the one index that gives this order (both are ranges of one value, as in
-- ListUserOrders).
select * from orders
where user_id >= @user_id and user_id <= @user_id
  and status >= @status and status <= @status
  and id < @before_id
order by user_id desc, status desc, id desc
limit @row_limit;

-- name: ListOrdersWithStatus :many
-- Every user's orders in one status (administrators), newest first: that status's range of
-- orders_status_idx, the one index that gives this order. The status is a range of one value, not
-- `status = @status`: with an equality the planner drops `status` from the order, and the generic
-- plan (which prices any status at a third of the orders) walked orders_pkey backwards with the
-- status as a filter, every order for a rare status.
select * from orders
where status >= @status and status <= @status
  and id < @before_id
order by status desc, id desc
limit @row_limit;

-- name: ListAllOrders :many
-- Every order (administrators), newest first.
select * from orders
where id < @before_id
order by id desc
limit @row_limit;

-- name: ListLapsedReservations :many
-- Reservations past their window, oldest first, after (@after_until, @after_id) (the last order of
-- the run's previous batch; a time before any and 0 for the first): a run goes on past an order it
-- could not expire, which stays lapsed, instead of listing it first in every batch. Not locked: each
-- is expired in a transaction of its own (LockLapsedReservation), so a batch never holds one order's
-- stock while waiting for another's. orders_reservation_expiry_idx bounds the range (the row's first
-- column) and gives its order; ties on the instant are sorted by id.
select id, reserved_until from orders
where status = 'reserved' and reserved_until < now()
  and (reserved_until, id) > (@after_until::timestamptz, @after_id::bigint)
order by reserved_until, id
limit @batch_size;

-- name: OldestLapsedReservation :one
-- How long the oldest reservation still past its window has been (seconds; nothing when none is): what
-- an expiry run leaves behind. The first of orders_reservation_expiry_idx.
select extract(epoch from now() - reserved_until)::float8 as lapsed_s from orders
where status = 'reserved' and reserved_until < now()
order by reserved_until
limit 1;

-- name: LockLapsedReservation :one
-- The order, locked, if it is still reserved past its window. After a wait for the lock the condition
-- is checked on the newest row: a concurrent expiry, cancel or payment leaves nothing to expire.
select * from orders
where id = @id and status = 'reserved' and reserved_until < now()
for update;

-- name: StockLedger :many
-- Units held by live orders per product (for the stock invariant: stock + held = initial + adjustments).
select oi.product_id, sum(oi.quantity)::bigint as held
from order_items oi
join orders o on o.id = oi.order_id
where o.status in ('reserved', 'paid', 'fulfilled')
group by oi.product_id
order by oi.product_id;

-- name: ListStalePendingOrders :many
-- Orders still pending well after placement (their reservation job was lost or is stuck), in id
-- order after @after_id (the last order of the run's previous batch; 0 for the first): a run goes on
-- past an order it could not reserve, which stays pending, instead of listing it first in every
-- batch. orders_status_idx's pending range from @after_id: the cursor is one row comparison on the
-- index's columns, which no other index can serve, and the order is the index's. With
-- `status = 'pending' and id > @after_id ... order by id`, orders_pkey served both the cursor and the
-- order: the generic plan walked it from @after_id with the status as a filter, and so did a custom
-- plan for the last batch (the range after it estimated short), reading every settled order in between
-- (4,000 rows for a batch of 200 in the plan test). created_at is a filter: ids and placement times
-- rise together, so past the stale orders only the few fresh ones are read.
select id from orders
where (status, id) > ('pending'::order_status, @after_id::bigint) and status <= 'pending'
  and created_at < @created_before
order by status, id
limit @batch_size;

-- name: OldestPendingOrder :one
-- How long ago the oldest order still pending was placed (seconds; nothing when none is): what a
-- reconciliation run leaves behind. The first of orders_status_idx's pending range.
select extract(epoch from now() - created_at)::float8 as age_s from orders
where status = 'pending'
order by id
limit 1;

-- name: UnitsHeldByUser :many
-- Units of each product in a user's open orders (pending, or reserved and still in their window, as
-- CountOpenOrders): the per-user hoarding caps. The open orders from orders_open_user_idx, then their
-- items by their key, a list no estimate can turn into a scan: joined, a busy account's estimate (the
-- user's share of all orders, times the open share) had the custom plan hash every order item of the
-- shop for the user's few.
select oi.product_id, sum(oi.quantity)::bigint as held
from order_items oi
where oi.order_id = any(array(
    select o.id from orders o
    where o.user_id = @user_id
      and (o.status = 'pending'
           or (o.status = 'reserved' and (o.reserved_until is null or o.reserved_until >= now())))
))
group by oi.product_id
order by oi.product_id;

-- name: LockPaymentId :exec
-- Serialises the events of one provider payment id (a redelivery under a new event id racing the
-- first): the second sees the first's row and is not taken for a second payment. Taken before the
-- order's row lock.
select pg_advisory_xact_lock(hashtextextended(concat('payment-id:', @payment_id::text), 0));

-- name: RecordPaymentEvent :one
-- A provider event is processed once: a replayed or redelivered id returns nothing. A
-- payment.succeeded stores what it took (payment id, amount, currency) and the order it named (also
-- when no such order exists: claimed_order_id); other types store nulls.
insert into payment_events (event_id, order_id, claimed_order_id, outcome, payment_id, amount, currency)
values (
    @event_id, sqlc.narg(order_id), sqlc.narg(claimed_order_id), 'received', sqlc.narg(payment_id),
    sqlc.narg(amount), sqlc.narg(currency)
)
on conflict (event_id) do nothing
returning event_id;

-- name: PaymentIdRecordedBefore :one
-- Whether another event already brought this payment id: the same money, not a second payment.
select exists (
    select 1 from payment_events where payment_id = @payment_id::text and event_id <> @event_id
) as recorded;

-- name: SetPaymentEventOutcome :exec
update payment_events set outcome = @outcome where event_id = @event_id;

-- name: ListRefundsDue :many
-- Payments whose money must go back and that nobody has marked refunded, newest first: keyset by
-- id (before_id = max bigint for the first page), served by payment_events_refunds_due_idx (whose
-- predicate this is). Only payments recorded with what they took: rows from before the payment id
-- was stored name nothing to return.
select * from payment_events
where outcome in ('refund-due', 'expired', 'mismatch') and refunded_at is null and payment_id is not null
  and id < @before_id::bigint
order by id desc
limit @row_limit;

-- name: MarkPaymentRefunded :one
-- Nothing when the event is unknown, not a refund due, or marked already (GetRefund then tells).
update payment_events
set refunded_at = now(), refunded_by = @refunded_by
where event_id = @event_id and outcome in ('refund-due', 'expired', 'mismatch') and refunded_at is null
  and payment_id is not null
returning *;

-- name: GetRefund :one
select * from payment_events
where event_id = @event_id and outcome in ('refund-due', 'expired', 'mismatch') and payment_id is not null;

-- name: PaidWithoutPaymentId :one
-- Whether the order was paid through the previous release (its paying event, 'paid', or 'refund-due'
-- once an administrator cancelled it, stored no payment id): another payment id for it cannot be told
-- from the same money (already refunded by hand after a cancel), and is not called a second payment.
-- Served by payment_events_order_idx.
select exists (
    select 1 from payment_events
    where order_id = @order_id and payment_id is null and outcome in ('paid', 'refund-due')
) as paid;

-- name: PayingPaymentKnown :one
-- Whether the payment that paid the order is recorded with its payment id (false only for an order
-- paid through the previous release during a deploy: then another payment id cannot be told from
-- the same money, and is not called a second payment).
select exists (
    select 1 from payment_events
    where order_id = @order_id and outcome = 'paid' and payment_id is not null
) as known;

-- name: QueueRefundOfPayingPayment :one
-- A paid order an administrator cancels keeps no money: the event whose payment paid it (outcome
-- 'paid'; one per order, as an order is paid once) becomes a refund due, listed and marked by the
-- queries above unchanged (and by payment_events_refunds_due_idx) when it carries its payment id.
-- Taken under the order's lock, before its products' (payment_events_order_idx serves it). Nothing
-- when no event paid it; a row without a payment id (paid through the release before payment ids
-- were stored) is kept money no list can name.
update payment_events
set outcome = 'refund-due'
where order_id = @order_id and outcome = 'paid'
returning *;

-- name: DatabaseNow :one
-- The database's clock, now: order deadlines are set and judged by it, as the expiry cron's now()
-- judges them (a web or worker host's clock may differ from the database's).
select clock_timestamp()::timestamptz as now;

-- name: CountOrdersPlacedBetween :one
-- Orders placed in [since, until) (the daily monitoring report): that range of orders_created_idx.
select count(*)::bigint as orders from orders where created_at >= @since and created_at < @until;

-- name: RevenueBetween :many
-- The money of the orders paid in [since, until), per currency (the daily monitoring report): each
-- paid order counts once, in the period of its payment (its transition to paid; a fulfilled order
-- was paid first; an order is paid once), whenever it was placed. An order only reserved is no
-- revenue: it may expire. A note of a payment the paid order did not keep (paid to paid, no
-- transition) is no payment: it counted the order again. The period's transitions from
-- order_events_settled_created_idx, then
-- their orders by their key, a list no estimate can turn into a scan: a join let the planner hash
-- every order ever placed (nothing deletes them) for a day's payments.
select o.currency, sum(o.total)::numeric as revenue
from orders o
where o.id = any(array(
    select e.order_id from order_events e
    where e.to_status = 'paid' and e.from_status is distinct from 'paid'
        and e.created_at >= @since and e.created_at < @until
))
group by o.currency
order by o.currency;

-- name: RefundedAfterPaymentBetween :many
-- The money of the paid orders an administrator cancelled in [since, until) (their transition from
-- paid to cancelled), per currency (the daily monitoring report): revenue a report counted when it was
-- paid, given back in the period of the cancel (a report already sent never changes).
-- Read as RevenueBetween (cancelled is final: an order is cancelled once).
select o.currency, sum(o.total)::numeric as refunded
from orders o
where o.id = any(array(
    select e.order_id from order_events e
    where e.from_status = 'paid' and e.to_status = 'cancelled' and e.created_at >= @since and e.created_at < @until
))
group by o.currency
order by o.currency;
