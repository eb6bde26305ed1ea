-- migrate:up
-- Task positions were unbounded: a client could set 2^63 - 1, after which `max(position) + 1` (the
-- position of every new task, sql/queries/tasks.sql CreateTask) overflowed and no task could be
-- created in that project again. The API now accepts 0 .. 2^31 - 1; bring stored outliers back.
update tasks set position = 2147483647 where position > 2147483647;

-- migrate:down
-- Nothing to undo: the original out-of-range values are not kept.
select 1;
