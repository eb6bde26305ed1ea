-- migrate:up
-- A feed filtered by actor (sql/queries/activity.sql FeedPageByActor) walks the actor's groups within
-- what the reader may see: per project of the reader, and the reader's private groups, as index
-- ranges. It used to walk all of the actor's groups and test each one, so a reader who could see none
-- of a busy actor's groups made the database read every one of them, on every request.
--
-- Each actor row carries its group's project and audience (constant for a group: both are part of its
-- stream), set when the row is inserted (AddEventsToActivityGroups).
alter table activity_group_actors
    add column project_id bigint,
    add column audience_user_id bigint;

update activity_group_actors a
set project_id = g.project_id, audience_user_id = g.audience_user_id
from activity_groups g
where g.id = a.group_id;

-- The actor's groups in one project that the project's members may see.
create index activity_group_actors_project_idx on activity_group_actors (actor_id, project_id, last_seq desc)
    include (group_id) where audience_user_id is null;
-- The actor's groups private to one user (an order's buyer).
create index activity_group_actors_audience_idx
    on activity_group_actors (actor_id, audience_user_id, last_seq desc)
    include (group_id, project_id) where audience_user_id is not null;

-- migrate:down
drop index activity_group_actors_audience_idx;
drop index activity_group_actors_project_idx;
alter table activity_group_actors drop column audience_user_id, drop column project_id;
