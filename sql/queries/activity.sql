-- name: RecordActivity :execrows
-- Idempotent: a redelivered outbox event is stored once.
insert into activity_events (outbox_id, actor_id, verb, object_type, object_id, project_id, data, occurred_at)
values (@outbox_id, @actor_id, @verb, @object_type, @object_id, sqlc.narg(project_id), @data, @occurred_at)
on conflict (outbox_id) do nothing;
