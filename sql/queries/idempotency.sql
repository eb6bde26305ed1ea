-- Idempotency keys of every creating route (app/core/idempotency.py): one row per (user, key),
-- first a claim (a short lease), then the stored answer (kept 24 hours).

-- name: ClaimIdempotencyKey :one
-- A new key is claimed for a lease (returns its end, which identifies this claim); an existing key
-- returns nothing. A claim whose request died is freed when its lease ends, not after a day.
insert into idempotency_keys (user_id, key, request_hash, expires_at)
values (@user_id, @key, @request_hash, now() + make_interval(secs => @lease_s::float8))
on conflict (user_id, key) do nothing
returning expires_at;

-- name: GetIdempotencyKey :one
select * from idempotency_keys where user_id = @user_id and key = @key;

-- name: DeleteExpiredIdempotencyKey :execrows
delete from idempotency_keys where user_id = @user_id and key = @key and expires_at <= now();

-- name: CompleteIdempotencyKey :execrows
-- Only while this request's claim still holds (0 rows: its lease ended and a retry claimed the key).
update idempotency_keys
set response_status = @response_status, response_body = @response_body, resource_id = sqlc.narg(resource_id),
    expires_at = now() + interval '24 hours'
where user_id = @user_id and key = @key and response_status is null and expires_at = @claimed_until;

-- name: ReleaseIdempotencyKey :exec
delete from idempotency_keys
where user_id = @user_id and key = @key and response_status is null and expires_at = @claimed_until;

-- name: PurgeExpiredIdempotencyKeys :execrows
-- One bounded chunk (served by idempotency_keys_expiry_idx): the caller repeats it, one transaction
-- each, until fewer rows are deleted. Answers past their 24 hours, and claims whose request has been
-- gone a while (@claim_grace_s past their lease: a slow request may still complete a claim whose
-- lease ended if no retry claimed the key). The lock re-reads a row another transaction changed
-- meanwhile: a claim completed while the purge waited for it (now 24 hours ahead) is kept.
delete from idempotency_keys doomed
where doomed.ctid = any(array(
    select c.ctid from idempotency_keys c
    where c.expires_at <= now()
      and (c.response_status is not null or c.expires_at <= now() - make_interval(secs => @claim_grace_s::float8))
    limit @chunk_size::integer
    for update
));
