-- migrate:up transaction:false
-- The roots of a status and a kind, newest first (ListGroupsWithStatusAndKind: one range per pair).
-- The errors list's status and kind filters had no index: a page of a rare status (30 ignored among
-- 20,000 roots) read every root newest first, under a custom plan or the generic one. Concurrently,
-- one index per file (see 20261202010500).
create index concurrently if not exists monitoring_groups_listed_idx on monitoring_groups (status, kind, id)
where parent_id is null;

-- migrate:down transaction:false
drop index concurrently if exists monitoring_groups_listed_idx;
