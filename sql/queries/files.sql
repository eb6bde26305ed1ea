-- name: CreateProjectFile :one
insert into project_files (project_id, uploaded_by, filename, content_type, size_bytes, sha256, storage_key)
values (@project_id, @uploaded_by, @filename, @content_type, @size_bytes, @sha256, @storage_key)
returning *;

-- name: GetProjectFile :one
-- Scoped by project: a file id of another project is simply not found.
select * from project_files where id = @id and project_id = @project_id;

-- name: ListProjectFiles :many
-- Newest first, keyset by id (index project_files_project_idx, scanned backwards).
select * from project_files
where project_id = @project_id
  and (sqlc.narg(before_id)::bigint is null or id < sqlc.narg(before_id)::bigint)
order by id desc
limit @row_limit;

-- name: DeleteProjectFile :one
delete from project_files where id = @id and project_id = @project_id
returning *;
