-- name: LockTaskPositions :exec
-- Serialises the creations of tasks in one project, until the transaction ends: each takes the next
-- position (CreateTask), which it must read once the previous creation has committed. A statement of
-- its own, before CreateTask: a statement's snapshot is taken before its lock is granted.
select pg_advisory_xact_lock(hashtextextended(concat('task-positions:', @project_id::bigint), 0));

-- name: CountProjectTasks :one
-- Under LockTaskPositions: no task of the project is created meanwhile (TASKS_PER_PROJECT_MAX).
select count(*) from tasks where project_id = @project_id;

-- name: CreateTask :one
-- Under LockTaskPositions: the next position of the project is this task's alone.
insert into tasks (project_id, title, description, status, priority, assignee_id, due_date, position, created_by, updated_by)
values (@project_id, @title, @description, @status, @priority, sqlc.narg(assignee_id), sqlc.narg(due_date),
        coalesce((select max(position) + 1 from tasks where project_id = @project_id), 0), @created_by, @created_by)
returning *;

-- name: GetTaskWithRole :one
-- The task and the caller's role in its project (no row: not a member, or no such task).
select t.*, m.role as my_role
from tasks t
join project_members m on m.project_id = t.project_id and m.user_id = @user_id
where t.id = @task_id;

-- name: TaskProject :one
-- A task's project (tasks never move between projects: no lock needed to rely on it).
select project_id from tasks where id = @id;

-- name: LockTask :one
-- Before a change of the task or its comments: the row stays locked until the transaction ends, so
-- a concurrent deletion either came first (no row) or waits. Comments added through the service take
-- it too, so they are counted one at a time (COMMENTS_PER_TASK_MAX). NO KEY UPDATE: a bare insert's
-- foreign-key check (KEY SHARE) does not wait for it.
select id from tasks where id = @id for no key update;

-- name: UpdateTask :one
-- The given fields set (null: kept), only when that changes the task: no row when it changes nothing,
-- so a PATCH that changes nothing leaves updated_at, version, the lists' order and their walks as
-- they were. The version is the trigger's (tasks_next_version: every change of the row takes the next).
update tasks t
set title = n.title,
    description = n.description,
    status = n.status,
    priority = n.priority,
    assignee_id = n.assignee_id,
    due_date = n.due_date,
    position = n.position,
    updated_by = @updated_by,
    updated_at = now()
from (
    select o.id,
           coalesce(sqlc.narg(title), o.title) as title,
           coalesce(sqlc.narg(description), o.description) as description,
           coalesce(sqlc.narg(status)::task_status, o.status) as status,
           coalesce(sqlc.narg(priority)::task_priority, o.priority) as priority,
           case when @set_assignee::boolean then sqlc.narg(assignee_id)::bigint else o.assignee_id end as assignee_id,
           case when @set_due_date::boolean then sqlc.narg(due_date)::date else o.due_date end as due_date,
           coalesce(sqlc.narg(position)::bigint, o.position) as position
    from tasks o
    where o.id = @id
) n
where t.id = n.id
  and (t.title, t.description, t.status, t.priority, t.assignee_id, t.due_date, t.position)
      is distinct from (n.title, n.description, n.status, n.priority, n.assignee_id, n.due_date, n.position)
returning t.*;

-- name: DatabaseClock :one
-- The database's clock at the start of this statement (its transaction, in autocommit): a list read
-- by a later statement sees every change committed before it.
select now()::timestamptz as now;

-- name: DeleteTask :execrows
delete from tasks where id = @id;

-- name: ListProjectTasks :many
-- Filters are optional (null = any). The sort key is one bigint per mode so that one keyset
-- condition, (sort_key, id) > (after_key, after_id), pages every mode:
--   created: 0 (id order) · due: days since epoch, no date last · priority: urgent first ·
--   updated: most recent first.
-- updated_after: only tasks changed after it (exclusive). as_of: only tasks last changed at or before
-- it (a walk's later pages: a task changed since has left the place the walk gave it). read_at: the
-- clock when this statement started, before its snapshot was taken (its transaction's now()).
-- nullable: assignee_id, due_date
select id, project_id, title, description, status, priority, assignee_id, due_date, position,
       created_by, updated_by, created_at, updated_at, version, sort_key, now()::timestamptz as read_at
from (
    select t.*,
           (case @sort::text
                when 'due' then coalesce(t.due_date - date '1970-01-01', 2147483647)::bigint
                when 'priority' then -array_position(enum_range(null::task_priority), t.priority)::bigint
                when 'updated' then -(extract(epoch from t.updated_at) * 1000000)::bigint
                else 0::bigint
            end) as sort_key
    from tasks t
    where t.project_id = @project_id
      -- Only for a member (any role): the membership check rides on the list, one round trip
      -- instead of two; an empty page is told apart from "not a member" by the caller.
      and exists (select 1 from project_members m where m.project_id = @project_id and m.user_id = @member_id)
      and (sqlc.narg(status)::task_status is null or t.status = sqlc.narg(status)::task_status)
      and (sqlc.narg(priority)::task_priority is null or t.priority = sqlc.narg(priority)::task_priority)
      and (sqlc.narg(assignee_id)::bigint is null or t.assignee_id = sqlc.narg(assignee_id)::bigint)
      and (sqlc.narg(due_before)::date is null or t.due_date <= sqlc.narg(due_before)::date)
      and (sqlc.narg(due_after)::date is null or t.due_date >= sqlc.narg(due_after)::date)
      and (sqlc.narg(updated_after)::timestamptz is null or t.updated_at > sqlc.narg(updated_after)::timestamptz)
      and (sqlc.narg(as_of)::timestamptz is null or t.updated_at <= sqlc.narg(as_of)::timestamptz)
      -- search: the task's stored document (task_search_documents), never one computed per task and
      -- query. Every task has one (triggers; the older tasks' backfilled by migration 20261203040100).
      -- The subquery is bounded to the project: the planner either probes each task of the walk by
      -- task_id (it stops at row_limit) or collects the project's matches once (project_id, or the
      -- GIN index for a rare word), never every project's documents.
      and (sqlc.narg(search)::text is null or exists (
          select 1
          from task_search_documents d
          where d.task_id = t.id
            and d.project_id = @project_id
            and d.document @@ websearch_to_tsquery('simple', sqlc.narg(search)::text)))
) s
where (s.sort_key, s.id) > (@after_key::bigint, @after_id::bigint)
order by s.sort_key, s.id
limit @row_limit;

-- name: ListAssignedTasks :many
-- Tasks assigned to the caller in projects they are still a member of, keyset by id.
select t.*
from tasks t
join project_members m on m.project_id = t.project_id and m.user_id = @user_id
where t.assignee_id = @user_id
  and (sqlc.narg(status)::task_status is null or t.status = sqlc.narg(status)::task_status)
  and t.id > @after_id
order by t.id
limit @row_limit;
