-- migrate:up transaction:false
-- The task list's search matches the stored documents (task_search_documents, 20261203040000) since
-- the last release, and nothing reads this expression index any more; yet every insert and every
-- update of a task computed it again: ~1 ms per task with a 20,000-character description, so a
-- project's deletion, which nulls the assignee of each of its members' tasks, spent seconds in it.
-- Kept one release for the release before that one (it searched through it) during a rolling
-- deploy. Dropped concurrently (see 20261202011000).
drop index concurrently if exists tasks_search_idx;

-- migrate:down transaction:false
create index concurrently if not exists tasks_search_idx on tasks
using gin (task_search_document(title, description));
