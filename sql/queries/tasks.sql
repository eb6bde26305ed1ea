-- name: LockTaskPositions :exec
-- Serialises the creations of tasks in one project, until the transaction ends: each takes the next
-- position (CreateTask), which it must read once the previous creation has committed. A statement of
-- its own, before CreateTask: a statement's snapshot is taken before its lock is granted.
select pg_advisory_xact_lock(hashtextextended(concat('task-positions:', @project_id::bigint), 0));

-- name: CountProjectTasks :one
-- Under LockTaskPositions: no task of the project is created meanwhile (TASKS_PER_PROJECT_MAX).
select count(*) from tasks where project_id = @project_id;

-- name: CreateTask :one
-- Under LockTaskPositions: the next position of the project is this task's alone, but never above
-- @max_position (the largest a client may set, schemas.MAX_POSITION): after a task was moved there,
-- the new tasks share it rather than take a position no client could send back.
insert into tasks (project_id, title, description, status, priority, assignee_id, due_date, position, created_by, updated_by)
values (@project_id, @title, @description, @status, @priority, sqlc.narg(assignee_id), sqlc.narg(due_date),
        least(coalesce((select max(position) + 1 from tasks where project_id = @project_id), 0), @max_position::bigint),
        @created_by, @created_by)
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

-- name: ListProjectTasksByCreated :many
-- sort=created: id order, tasks_project_id_idx (project_id, id) from the cursor's id.
--
-- The task list, one statement per sort (the service picks it): each reads its page from one index
-- range of the project, in the index's order, and stops after @row_limit rows, whatever the plan.
-- One statement for every sort (a CASE sort key, `(sort_key, id) > (after_key, after_id)`) could use
-- no index for its order: every page read and sorted the whole project (10,000 rows for 51), and its
-- generic plan did even for sort=created. The cursor's key (services.sort_key) is computed from the
-- row, not here.
--
-- Filters are optional (null = any), applied to the rows of the range as it is walked: a rare filter
-- walks further (a filter is no range; the search may instead collect the project's matches first).
-- updated_after: only tasks changed after it (exclusive). as_of: only tasks last changed at or before
-- it (a due/priority/updated walk's later pages: a task changed since has left the place the walk
-- gave it). read_at: the clock when this statement started, before its snapshot was taken (its
-- transaction's now()). The membership check rides on the list, one round trip instead of two; an
-- empty page is told apart from "not a member" by the caller. The search: the task's stored document
-- (task_search_documents, bounded to the project), never one computed per task and query.
-- nullable: assignee_id, due_date
select t.*, now()::timestamptz as read_at
from tasks t
where t.project_id = @project_id
  and t.id > @after_id
  and (sqlc.narg(status)::task_status is null or t.status = sqlc.narg(status)::task_status)
  and (sqlc.narg(priority)::task_priority is null or t.priority = sqlc.narg(priority)::task_priority)
  and (sqlc.narg(assignee_id)::bigint is null or t.assignee_id = sqlc.narg(assignee_id)::bigint)
  and (sqlc.narg(due_before)::date is null or t.due_date <= sqlc.narg(due_before)::date)
  and (sqlc.narg(due_after)::date is null or t.due_date >= sqlc.narg(due_after)::date)
  and (sqlc.narg(updated_after)::timestamptz is null or t.updated_at > sqlc.narg(updated_after)::timestamptz)
  and (sqlc.narg(as_of)::timestamptz is null or t.updated_at <= sqlc.narg(as_of)::timestamptz)
  and (sqlc.narg(search)::text is null or exists (
      select 1
      from task_search_documents d
      where d.task_id = t.id
        and d.project_id = @project_id
        and d.document @@ websearch_to_tsquery('simple', sqlc.narg(search)::text)))
  and exists (select 1 from project_members m where m.project_id = @project_id and m.user_id = @member_id)
order by t.id
limit @row_limit;

-- name: ListProjectTasksByDue :many
-- sort=due: soonest first, undated last, then id: tasks_project_due_idx (project_id, due_date, id)
-- in its own order (nulls last). Two ranges, not one: the dated tasks after (@after_due, @after_id)
-- (none when @after_due is null: the cursor is among the undated), then the undated after
-- @after_undated_id. Each stops at @row_limit; the page is the first @row_limit of both.
-- nullable: assignee_id, due_date
select t.*, now()::timestamptz as read_at
from (
    (select t.*
     from tasks t
     where t.project_id = @project_id
       and (t.due_date, t.id) > (sqlc.narg(after_due)::date, @after_id::bigint)
       and (sqlc.narg(status)::task_status is null or t.status = sqlc.narg(status)::task_status)
       and (sqlc.narg(priority)::task_priority is null or t.priority = sqlc.narg(priority)::task_priority)
       and (sqlc.narg(assignee_id)::bigint is null or t.assignee_id = sqlc.narg(assignee_id)::bigint)
       and (sqlc.narg(due_before)::date is null or t.due_date <= sqlc.narg(due_before)::date)
       and (sqlc.narg(due_after)::date is null or t.due_date >= sqlc.narg(due_after)::date)
       and (sqlc.narg(updated_after)::timestamptz is null or t.updated_at > sqlc.narg(updated_after)::timestamptz)
       and (sqlc.narg(as_of)::timestamptz is null or t.updated_at <= sqlc.narg(as_of)::timestamptz)
       and (sqlc.narg(search)::text is null or exists (
           select 1
           from task_search_documents d
           where d.task_id = t.id
             and d.project_id = @project_id
             and d.document @@ websearch_to_tsquery('simple', sqlc.narg(search)::text)))
     order by t.due_date nulls last, t.id
     limit @row_limit)
    union all
    (select t.*
     from tasks t
     where t.project_id = @project_id
       and t.due_date is null and t.id > @after_undated_id::bigint
       and (sqlc.narg(status)::task_status is null or t.status = sqlc.narg(status)::task_status)
       and (sqlc.narg(priority)::task_priority is null or t.priority = sqlc.narg(priority)::task_priority)
       and (sqlc.narg(assignee_id)::bigint is null or t.assignee_id = sqlc.narg(assignee_id)::bigint)
       and (sqlc.narg(due_before)::date is null or t.due_date <= sqlc.narg(due_before)::date)
       and (sqlc.narg(due_after)::date is null or t.due_date >= sqlc.narg(due_after)::date)
       and (sqlc.narg(updated_after)::timestamptz is null or t.updated_at > sqlc.narg(updated_after)::timestamptz)
       and (sqlc.narg(as_of)::timestamptz is null or t.updated_at <= sqlc.narg(as_of)::timestamptz)
       and (sqlc.narg(search)::text is null or exists (
           select 1
           from task_search_documents d
           where d.task_id = t.id
             and d.project_id = @project_id
             and d.document @@ websearch_to_tsquery('simple', sqlc.narg(search)::text)))
     order by t.due_date nulls last, t.id
     limit @row_limit)
) t
where exists (select 1 from project_members m where m.project_id = @project_id and m.user_id = @member_id)
order by t.due_date nulls last, t.id
limit @row_limit;

-- name: ListProjectTasksByPriority :many
-- sort=priority: urgent first (the enum's order, descending), then id: tasks_project_priority_idx
-- (project_id, priority desc, id) in its own order. Two ranges: the rest of the cursor's priority
-- (a range of one value, not `priority = @after_priority`: an equality leaves priority out of the
-- order, and the plan may then read the project in id order with priority as a filter), then the
-- lower priorities.
-- nullable: assignee_id, due_date
select t.*, now()::timestamptz as read_at
from (
    (select t.*
     from tasks t
     where t.project_id = @project_id
       and t.priority >= @after_priority::task_priority and t.priority <= @after_priority::task_priority
       and t.id > @after_id::bigint
       and (sqlc.narg(status)::task_status is null or t.status = sqlc.narg(status)::task_status)
       and (sqlc.narg(priority)::task_priority is null or t.priority = sqlc.narg(priority)::task_priority)
       and (sqlc.narg(assignee_id)::bigint is null or t.assignee_id = sqlc.narg(assignee_id)::bigint)
       and (sqlc.narg(due_before)::date is null or t.due_date <= sqlc.narg(due_before)::date)
       and (sqlc.narg(due_after)::date is null or t.due_date >= sqlc.narg(due_after)::date)
       and (sqlc.narg(updated_after)::timestamptz is null or t.updated_at > sqlc.narg(updated_after)::timestamptz)
       and (sqlc.narg(as_of)::timestamptz is null or t.updated_at <= sqlc.narg(as_of)::timestamptz)
       and (sqlc.narg(search)::text is null or exists (
           select 1
           from task_search_documents d
           where d.task_id = t.id
             and d.project_id = @project_id
             and d.document @@ websearch_to_tsquery('simple', sqlc.narg(search)::text)))
     order by t.priority desc, t.id
     limit @row_limit)
    union all
    (select t.*
     from tasks t
     where t.project_id = @project_id
       and t.priority < @after_priority::task_priority
       and (sqlc.narg(status)::task_status is null or t.status = sqlc.narg(status)::task_status)
       and (sqlc.narg(priority)::task_priority is null or t.priority = sqlc.narg(priority)::task_priority)
       and (sqlc.narg(assignee_id)::bigint is null or t.assignee_id = sqlc.narg(assignee_id)::bigint)
       and (sqlc.narg(due_before)::date is null or t.due_date <= sqlc.narg(due_before)::date)
       and (sqlc.narg(due_after)::date is null or t.due_date >= sqlc.narg(due_after)::date)
       and (sqlc.narg(updated_after)::timestamptz is null or t.updated_at > sqlc.narg(updated_after)::timestamptz)
       and (sqlc.narg(as_of)::timestamptz is null or t.updated_at <= sqlc.narg(as_of)::timestamptz)
       and (sqlc.narg(search)::text is null or exists (
           select 1
           from task_search_documents d
           where d.task_id = t.id
             and d.project_id = @project_id
             and d.document @@ websearch_to_tsquery('simple', sqlc.narg(search)::text)))
     order by t.priority desc, t.id
     limit @row_limit)
) t
where exists (select 1 from project_members m where m.project_id = @project_id and m.user_id = @member_id)
order by t.priority desc, t.id
limit @row_limit;

-- name: ListProjectTasksByUpdated :many
-- sort=updated: most recently changed first, then id: tasks_project_updated_desc_idx
-- (project_id, updated_at desc, id) in its own order. Two ranges, as ListProjectTasksByPriority's:
-- the rest of the cursor's moment (a range of one value), then the earlier moments.
-- nullable: assignee_id, due_date
select t.*, now()::timestamptz as read_at
from (
    (select t.*
     from tasks t
     where t.project_id = @project_id
       and t.updated_at >= @after_updated::timestamptz and t.updated_at <= @after_updated::timestamptz
       and t.id > @after_id::bigint
       and (sqlc.narg(status)::task_status is null or t.status = sqlc.narg(status)::task_status)
       and (sqlc.narg(priority)::task_priority is null or t.priority = sqlc.narg(priority)::task_priority)
       and (sqlc.narg(assignee_id)::bigint is null or t.assignee_id = sqlc.narg(assignee_id)::bigint)
       and (sqlc.narg(due_before)::date is null or t.due_date <= sqlc.narg(due_before)::date)
       and (sqlc.narg(due_after)::date is null or t.due_date >= sqlc.narg(due_after)::date)
       and (sqlc.narg(updated_after)::timestamptz is null or t.updated_at > sqlc.narg(updated_after)::timestamptz)
       and (sqlc.narg(as_of)::timestamptz is null or t.updated_at <= sqlc.narg(as_of)::timestamptz)
       and (sqlc.narg(search)::text is null or exists (
           select 1
           from task_search_documents d
           where d.task_id = t.id
             and d.project_id = @project_id
             and d.document @@ websearch_to_tsquery('simple', sqlc.narg(search)::text)))
     order by t.updated_at desc, t.id
     limit @row_limit)
    union all
    (select t.*
     from tasks t
     where t.project_id = @project_id
       and t.updated_at < @after_updated::timestamptz
       and (sqlc.narg(status)::task_status is null or t.status = sqlc.narg(status)::task_status)
       and (sqlc.narg(priority)::task_priority is null or t.priority = sqlc.narg(priority)::task_priority)
       and (sqlc.narg(assignee_id)::bigint is null or t.assignee_id = sqlc.narg(assignee_id)::bigint)
       and (sqlc.narg(due_before)::date is null or t.due_date <= sqlc.narg(due_before)::date)
       and (sqlc.narg(due_after)::date is null or t.due_date >= sqlc.narg(due_after)::date)
       and (sqlc.narg(updated_after)::timestamptz is null or t.updated_at > sqlc.narg(updated_after)::timestamptz)
       and (sqlc.narg(as_of)::timestamptz is null or t.updated_at <= sqlc.narg(as_of)::timestamptz)
       and (sqlc.narg(search)::text is null or exists (
           select 1
           from task_search_documents d
           where d.task_id = t.id
             and d.project_id = @project_id
             and d.document @@ websearch_to_tsquery('simple', sqlc.narg(search)::text)))
     order by t.updated_at desc, t.id
     limit @row_limit)
) t
where exists (select 1 from project_members m where m.project_id = @project_id and m.user_id = @member_id)
order by t.updated_at desc, t.id
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
