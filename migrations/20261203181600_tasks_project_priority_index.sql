-- migrate:up transaction:false
-- The task list sorted by `priority` (ListProjectTasksByPriority: urgent first, the enum's order
-- descending, then id) reads its page from this index in its own order; without it every page read
-- and sorted the whole project. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists tasks_project_priority_idx
    on tasks (project_id, priority desc, id);

-- migrate:down transaction:false
drop index concurrently if exists tasks_project_priority_idx;
