-- migrate:up
-- Optimistic concurrency for tasks and projects: each row's version is the strong ETag its GET
-- answers, which PATCH and DELETE compare If-Match with. A constant default on a new column is
-- metadata only since PostgreSQL 11 (no rewrite, every existing row reads 1): the locks are instants.
set local lock_timeout = '3s';
alter table tasks add column version bigint not null default 1;
alter table projects add column version bigint not null default 1;

-- Every change of a row takes the next version, whatever statement makes it: our updates, the
-- previous release's during a rolling deploy (it knows nothing of versions), and the foreign key's
-- `on delete set null (assignee_id)` that unassigns a removed member's tasks (no SQL of ours runs
-- then, and the answer a client saw changed). An update that changes nothing keeps the version.
-- Statements never set the column themselves.
create function next_row_version() returns trigger
language plpgsql as $$
begin
    new.version := old.version + 1;
    return new;
end;
$$;

create trigger tasks_next_version
before update on tasks
for each row when (old.* is distinct from new.*) execute function next_row_version();

create trigger projects_next_version
before update on projects
for each row when (old.* is distinct from new.*) execute function next_row_version();

-- migrate:down
set local lock_timeout = '3s';
drop trigger projects_next_version on projects;
drop trigger tasks_next_version on tasks;
drop function next_row_version();
alter table projects drop column version;
alter table tasks drop column version;
