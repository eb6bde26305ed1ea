-- migrate:up transaction:false
-- The daily monitoring report counts the orders placed in its period (CountOrdersPlacedBetween):
-- nothing deletes orders, and without this index every run read every order ever placed, one more
-- day of them each day, in the report's one transaction under the statement timeout. Concurrently,
-- one index per file (see 20261202010500).
create index concurrently if not exists orders_created_idx on orders (created_at);

-- migrate:down transaction:false
drop index concurrently if exists orders_created_idx;
