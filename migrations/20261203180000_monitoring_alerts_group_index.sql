-- migrate:up transaction:false
-- A group's alerts, newest first (ListGroupAlerts: each member of the group's tree read from its own
-- range). The alerts list filtered by a group walked every alert newest first with the group as a
-- filter, so a group with few alerts among many read them all; and monitoring_alerts.group_id
-- references monitoring_groups (on delete set null) without an index. Alerts of no group are left
-- out. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists monitoring_alerts_group_idx on monitoring_alerts (group_id, id)
where group_id is not null;

-- migrate:down transaction:false
drop index concurrently if exists monitoring_alerts_group_idx;
