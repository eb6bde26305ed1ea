-- name: CountTaskComments :one
-- Under LockTask: no comment of the task is added meanwhile (COMMENTS_PER_TASK_MAX).
select count(*) from comments where task_id = @task_id;

-- name: CreateComment :one
insert into comments (task_id, author_id, body) values (@task_id, @author_id, @body)
returning *;

-- name: LockComment :one
-- The comment an edit or a deletion is about, locked until its transaction ends: a concurrent
-- deletion either came first (no row: 404) or waits.
select * from comments where id = @id and task_id = @task_id for update;

-- name: UpdateComment :one
update comments set body = @body, updated_at = now() where id = @id
returning *;

-- name: DeleteComment :execrows
delete from comments where id = @id;

-- name: ListComments :many
select c.*, u.display_name as author_name
from comments c
join users u on u.id = c.author_id
where c.task_id = @task_id and c.id > @after_id
order by c.id
limit @row_limit;
