-- name: InsertOutbox :one
insert into outbox (queue, task, payload, request_id)
values (@queue, @task, @payload, sqlc.narg(request_id))
returning id;

-- name: ClaimUnpublishedOutbox :many
-- Locks a batch of committed, unpublished rows; concurrent relays skip each other's rows.
select id, queue, task, payload, request_id
from outbox
where published_at is null
order by id
limit @batch_size
for update skip locked;

-- name: MarkOutboxPublished :execrows
update outbox
set published_at = now()
where id = any(@ids::bigint[]);

-- name: CountUnpublishedOutbox :one
-- nullable: oldest
select count(*) as pending, min(created_at)::timestamptz as oldest
from outbox
where published_at is null;

-- name: PurgePublishedOutbox :execrows
-- One bounded chunk: the caller repeats it, one transaction each, until fewer rows are deleted.
delete from outbox doomed
where doomed.ctid = any(array(
    select c.ctid from outbox c
    where c.published_at is not null and c.published_at < @published_before::timestamptz
    limit @chunk_size::integer
    for update
));
