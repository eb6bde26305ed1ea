-- migrate:up transaction:false
-- A new task takes its project's next position (CreateTask: max(position) + 1) under the project's
-- creation lock: without this index the max read every task of the project (a Seq Scan of 50,000
-- rows, 11 ms, while the project's other creations waited for the lock); with it, one index entry.
-- Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists tasks_project_position_idx on tasks (project_id, position);

-- migrate:down transaction:false
drop index concurrently if exists tasks_project_position_idx;
