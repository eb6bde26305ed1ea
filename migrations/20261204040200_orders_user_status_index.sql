-- migrate:up transaction:false
-- A buyer's orders in one status, newest first (ListUserOrdersWithStatus): that (user, status) range,
-- in id order. With orders_user_idx (user_id, id) alone the status was a filter over the user's whole
-- history (100,000 rows read for an empty page of a busy account), and a custom plan walked every
-- order of the shop backwards on orders_pkey. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists orders_user_status_idx on orders (user_id, status, id);

-- migrate:down transaction:false
drop index concurrently if exists orders_user_status_idx;
