-- migrate:up
-- A change of a task that did not set updated_at itself is stamped now (its transaction's start, as
-- UpdateTask stamps it). Only the foreign key's `on delete set null (assignee_id)` changes a task
-- that way: a removed member's tasks were unassigned with their old updated_at, so a list walk's
-- `?updated_after=<as_of>` catch-up, and the `updated` sort, never showed the unassignment.
-- Replacing the trigger locks tasks against writes for an instant (SHARE ROW EXCLUSIVE).
set local lock_timeout = '3s';
create function next_task_version() returns trigger
language plpgsql as $$
begin
    new.version := old.version + 1;
    if new.updated_at is not distinct from old.updated_at then
        new.updated_at := now();
    end if;
    return new;
end;
$$;

create or replace trigger tasks_next_version
before update on tasks
for each row when (old.* is distinct from new.*) execute function next_task_version();

-- migrate:down
set local lock_timeout = '3s';
create or replace trigger tasks_next_version
before update on tasks
for each row when (old.* is distinct from new.*) execute function next_row_version();
drop function next_task_version();
