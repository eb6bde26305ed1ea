-- migrate:up
-- Optimistic concurrency for products, as for tasks and projects (20261202063000_task_project_versions):
-- each row's version is the strong ETag its GET answers, which PATCH compares If-Match with, so an
-- administrator's form loaded before another's change cannot silently undo it. A constant default on
-- a new column is metadata only since PostgreSQL 11 (no rewrite, every existing row reads 1): the
-- locks are instants.
set local lock_timeout = '3s';
alter table products add column version bigint not null default 1;

-- Only what an administrator's form shows and sends moves the version: name, description, price,
-- active. Stock does not: reservations and releases (orders, the expiry cron) and adjustments change
-- it all the time, and a form must not be refused because someone bought something (stock has its own
-- condition, a stock adjustment's expected_stock). Whatever statement makes the change, the previous
-- release's during a rolling deploy included; statements never set the column themselves.
create trigger products_next_version
before update on products
for each row when (
    (old.name, old.description, old.price, old.active)
    is distinct from (new.name, new.description, new.price, new.active)
) execute function next_row_version();

-- migrate:down
set local lock_timeout = '3s';
drop trigger products_next_version on products;
alter table products drop column version;
