-- migrate:up
-- The foreign key 20261205100000 added `not valid`, checked on every assigned task (each one's
-- assignee is a member, copied into project_assignees there): a scan under SHARE UPDATE EXCLUSIVE on
-- tasks, so reads and writes go on.
set local lock_timeout = '3s';

alter table tasks validate constraint tasks_assignee_is_assignable;

-- migrate:down
-- Nothing to undo: 20261205100000's down drops the constraint.
