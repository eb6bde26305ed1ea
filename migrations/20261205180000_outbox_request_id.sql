-- migrate:up
-- The request that wrote an outbox row: its job's log lines carry the same request_id, so a failure
-- in the background is found from the request that caused it (and the other way round). Nullable: the
-- rows of crons and of the previous release have none.
set local lock_timeout = '3s';
alter table outbox add column request_id text;

-- migrate:down
set local lock_timeout = '3s';
alter table outbox drop column request_id;
