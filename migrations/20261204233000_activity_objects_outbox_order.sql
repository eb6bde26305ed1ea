-- migrate:up
-- The order of an object's titles (UpsertActivityObjects): the outbox id of the event that carried the
-- title. Outbox ids follow the order of the changes (an event is emitted in the transaction that
-- changed its object, after locking that row); seq, the feed's event id, follows the order the events
-- were recorded in, which a retried or recovered job reverses (a rename recorded before the creation
-- brought the old title back). Filled for the existing rows by the next migration; a row without one
-- counts as older than any event. seq stays for the previous release, which still orders by it.
set local lock_timeout = '3s';
alter table activity_objects add column outbox_id bigint;

-- migrate:down
set local lock_timeout = '3s';
alter table activity_objects drop column outbox_id;
