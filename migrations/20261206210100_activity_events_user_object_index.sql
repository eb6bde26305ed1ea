-- migrate:up transaction:false
-- The events about a member (object_type 'user': joined, left, role changed), by the member: an
-- account's erasure removes the name the previous release's worker may still have stored in them
-- (ForgetUserNames; see 20261206180000, whose clean-up a worker of that release undoes while it
-- runs beside this one). A few events per member. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists activity_events_user_object_idx on activity_events (object_id)
where object_type = 'user';

-- migrate:down transaction:false
drop index concurrently if exists activity_events_user_object_idx;
