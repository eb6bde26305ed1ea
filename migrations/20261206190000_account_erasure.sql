-- migrate:up
-- When an account was erased (app/domains/accounts/erasure.py): its address, name and password were
-- replaced and its sessions ended; the row stays, so what other people's records point to (tasks,
-- comments, orders) reads "Deleted user". Null: not erased. An erased account never changes again.
-- A nullable column without a default rewrites nothing, but takes the table's lock: behind a long
-- reader it would hold every sign-in (CONVENTIONS).
set local lock_timeout = '3s';
alter table users add column erased_at timestamptz;

-- migrate:down
set local lock_timeout = '3s';
alter table users drop column erased_at;
