-- migrate:up
-- What a payment.succeeded took (so that it can be returned from our data alone), and whether an
-- administrator has returned it (GET /api/admin/payments/refunds-due). Every payment.succeeded the
-- app processes from now on stores its payment id, amount and currency; other event types leave
-- them null.
--
-- Safe while the previous release still answers webhooks: each step takes its strong lock for an
-- instant. This file only changes the catalogue (new nullable columns, no rewrite; constraints NOT
-- VALID, so nothing is scanned under the lock, and the foreign key's lock on users is as short).
-- Rows keep coming meanwhile: new ones take their id from the sequence. The next migrations number
-- the older rows and recognise their payments (20261202013100, row locks only), validate the
-- constraints (20261202013200, no lock that stops reads or writes but for an instant at the end)
-- and build the indexes concurrently (20261202013300, 20261202013400).
set local lock_timeout = '3s';

create sequence payment_events_id_seq as bigint;
alter table payment_events
    add column id bigint,
    add column payment_id text,
    add column amount numeric,
    add column currency text,
    add column refunded_at timestamptz,
    add column refunded_by bigint;
alter table payment_events alter column id set default nextval('payment_events_id_seq');
alter sequence payment_events_id_seq owned by payment_events.id;
alter table payment_events
    add constraint payment_events_id_present check (id is not null) not valid,
    add constraint payment_events_payment_id_length check (length(payment_id) between 1 and 255) not valid,
    add constraint payment_events_amount_not_negative check (amount >= 0) not valid,
    add constraint payment_events_currency_code check (currency ~ '^[A-Z]{3}$') not valid,
    add constraint payment_events_payment_complete
        check ((payment_id is null) = (amount is null) and (amount is null) = (currency is null)) not valid,
    add constraint payment_events_refunded_by_fkey
        foreign key (refunded_by) references users (id) on delete set null not valid;

-- migrate:down
-- Refuses while refunds are recorded: they exist nowhere else (an up after a down would list them
-- as owed again).
do $$
begin
    if exists (select 1 from payment_events where refunded_at is not null) then
        raise exception 'payment_events records refunds made; roll back by hand if they may be lost';
    end if;
end $$;
alter table payment_events
    drop constraint payment_events_refunded_by_fkey,
    drop constraint payment_events_payment_complete,
    drop constraint payment_events_currency_code,
    drop constraint payment_events_amount_not_negative,
    drop constraint payment_events_payment_id_length,
    drop constraint payment_events_id_present,
    drop column refunded_by,
    drop column refunded_at,
    drop column currency,
    drop column amount,
    drop column payment_id,
    drop column id;
