-- migrate:up
-- An outbox row's payload is a job's keyword arguments: a JSON object. One that was not (an array, a
-- string: a hand-written insert, a data fix) failed the relay's every round, which claims the oldest
-- rows first, so nothing behind it was ever published, on any queue (a review). New rows are checked
-- from this commit on; rows already there are checked by the next migration (a scan that lets reads
-- and writes go on), after any such row is wrapped into an object here: its job then fails without
-- stopping the relay (a feed batch with it fails whole; the recovery cron records the others).
set local lock_timeout = '3s';

update outbox set payload = jsonb_build_object('payload', payload) where jsonb_typeof(payload) <> 'object';
alter table outbox add constraint outbox_payload_object check (jsonb_typeof(payload) = 'object') not valid;

-- migrate:down
set local lock_timeout = '3s';
alter table outbox drop constraint outbox_payload_object;
