-- migrate:up transaction:false
-- The task list sorted by `updated` (ListProjectTasksByUpdated: most recent first, then id) reads its
-- page from this index in its own order. tasks_project_updated_idx (updated_at ascending, then id)
-- gives that order in neither direction (backwards, ties come by id descending), so every page read
-- and sorted the whole project. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists tasks_project_updated_desc_idx
    on tasks (project_id, updated_at desc, id);

-- migrate:down transaction:false
drop index concurrently if exists tasks_project_updated_desc_idx;
