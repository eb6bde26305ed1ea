-- migrate:up transaction:false
-- An administrator's list of one role's users (ListUsersWithRole), by id: users_role_active_idx
-- gives a role's users by activity first, so a plan had to sort all of them (the members) or walk
-- every user by id with the role as a filter (all of them, to list the few administrators).
-- Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists users_role_id_idx on users (role, id);

-- migrate:down transaction:false
drop index concurrently if exists users_role_id_idx;
