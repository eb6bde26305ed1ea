-- migrate:up
-- The check of 20261206170000 on the rows that were already there (SHARE UPDATE EXCLUSIVE: reads and
-- writes go on while it scans).
set local lock_timeout = '3s';

alter table outbox validate constraint outbox_payload_object;

-- migrate:down
-- Nothing: a validated constraint is the same constraint (the previous migration's down drops it).
