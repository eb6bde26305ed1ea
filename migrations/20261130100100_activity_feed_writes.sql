-- migrate:up
-- Fewer writes per stored event (the feed stores thousands per second): what an event row no longer
-- needs now that it belongs to a group.
--
-- An event's project and audience are its group's: deleting a project (or a user) deletes their
-- groups, and the groups take their events along. The event's own foreign keys to them, and the
-- indexes that served only those cascades, go. (The feed writer drops events whose project or
-- audience is already gone before it stores them: NewActivityEvents.)
alter table activity_events
    drop constraint activity_events_project_id_fkey,
    drop constraint activity_events_audience_user_id_fkey;
drop index activity_events_project_idx;
drop index activity_events_audience_idx;

-- The same for the actor: the per-row check of the foreign key locked the actor's users row for
-- every event stored. Users are deactivated, never deleted, by the API; were one deleted, their
-- groups' actor rows (activity_group_actors) and their private groups still go with them, and
-- their events in other people's groups drop out of every listing (which joins users).
alter table activity_events drop constraint activity_events_actor_id_fkey;
drop index activity_events_actor_idx;

-- A group's sample objects are read from its primary key range (a few rows; sorted at read time):
-- an index on last_seq changed with every event of the group.
drop index activity_group_objects_recent_idx;

-- migrate:down
create index activity_events_actor_idx on activity_events (actor_id, occurred_at desc, id desc);
alter table activity_events
    add constraint activity_events_actor_id_fkey foreign key (actor_id) references users (id) on delete cascade;
create index activity_group_objects_recent_idx on activity_group_objects (group_id, last_seq desc) include (object_id);
create index activity_events_audience_idx on activity_events (audience_user_id) where audience_user_id is not null;
create index activity_events_project_idx on activity_events (project_id, occurred_at desc, id desc);
alter table activity_events
    add constraint activity_events_project_id_fkey foreign key (project_id) references projects (id) on delete cascade,
    add constraint activity_events_audience_user_id_fkey foreign key (audience_user_id) references users (id) on delete cascade;
