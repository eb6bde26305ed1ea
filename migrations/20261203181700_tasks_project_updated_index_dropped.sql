-- migrate:up transaction:false
-- tasks_project_updated_idx (project_id, updated_at, id) is redundant with
-- tasks_project_updated_desc_idx (project_id, updated_at desc, id, 20261203181500): the same columns,
-- so every range of a project's moments (updated_after, as_of) either one serves the other does, and
-- no statement asks for its order (updated_at ascending, ties by id ascending; the task list's
-- `updated` sort is the other index's order). Every change of a task wrote both. The previous
-- release's list (one statement, a CASE sort key) used neither for its order, and finds the same
-- ranges in the other index during a rolling deploy. Dropped concurrently (see 20261202011000).
drop index concurrently if exists tasks_project_updated_idx;

-- migrate:down transaction:false
create index concurrently if not exists tasks_project_updated_idx on tasks (project_id, updated_at, id);
