-- name: RecordActivity :execrows
-- Idempotent: a redelivered outbox event is stored once. An event whose project or actor was
-- deleted before it was delivered is dropped (nothing could show it), instead of failing forever.
insert into activity_events (outbox_id, actor_id, verb, object_type, object_id, project_id, data, occurred_at)
select @outbox_id, @actor_id, @verb, @object_type, @object_id, sqlc.narg(project_id), @data, @occurred_at
where exists (select 1 from users where id = @actor_id)
  and (sqlc.narg(project_id)::bigint is null or exists (select 1 from projects where id = sqlc.narg(project_id)::bigint))
on conflict (outbox_id) do nothing;
