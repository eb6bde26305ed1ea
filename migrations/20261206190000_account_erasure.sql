-- migrate:up
-- When an account was erased (AccountService.erase_user): its address, name and password were
-- replaced and its sessions ended; the row stays, so what other people's records point to (tasks,
-- comments, orders) reads "Deleted user". Null: not erased. An erased account never changes again.
alter table users add column erased_at timestamptz;

-- migrate:down
alter table users drop column erased_at;
