-- name: CreateProjectFile :one
-- charset: a text file's character encoding (declared at upload, or found to be UTF-8); null when
-- unknown or not text.
insert into project_files (project_id, uploaded_by, filename, content_type, charset, size_bytes, sha256, storage_key)
values (@project_id, @uploaded_by, @filename, @content_type, sqlc.narg(charset), @size_bytes, @sha256, @storage_key)
returning *;

-- name: GetProjectFile :one
-- Scoped by project: a file id of another project is simply not found.
select * from project_files where id = @id and project_id = @project_id;

-- name: ListProjectFiles :many
-- Newest first, keyset by id (index project_files_project_idx, scanned backwards; before_id = max
-- bigint for the first page). Not an optional cursor (`before_id is null or id < before_id`): a
-- prepared statement's generic plan could not bound the scan by it and read every newer file of the
-- project to reach a page (the last page of 1,000 files: 1,000 rows for 51).
select * from project_files
where project_id = @project_id
  and id < @before_id
order by id desc
limit @row_limit;

-- name: DeleteProjectFile :one
delete from project_files where id = @id and project_id = @project_id
returning *;

-- name: LockUploadQuotas :exec
-- Serialises the quota checks of one uploader and of one project (taken in this order: no deadlock).
select pg_advisory_xact_lock(hashtextextended(concat('files-uploader:', @user_id::bigint), 0)),
       pg_advisory_xact_lock(hashtextextended(concat('files-project:', @project_id::bigint), 0));

-- name: ProjectFileUsage :one
select count(*)::bigint as files, coalesce(sum(size_bytes), 0)::bigint as bytes
from project_files where project_id = @project_id;

-- name: UploaderFileUsage :one
-- Only the files of projects the uploader still belongs to: one removed from (or leaving) a project
-- can neither see nor delete the files left there, which count against that project's quota alone.
select count(*)::bigint as files, coalesce(sum(f.size_bytes), 0)::bigint as bytes
from project_files f
where f.uploaded_by = @user_id
  and exists (select 1 from project_members m where m.project_id = f.project_id and m.user_id = @user_id);

-- name: ExistingStorageKeys :many
select storage_key from project_files where storage_key = any(@keys::text[]) order by storage_key;
