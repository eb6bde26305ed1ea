-- migrate:up
-- The feed kept a member's name as the title of their object, and every event kept the data it was
-- emitted with: a task's title, a file's name, a project's name, a member's name. A rename or a
-- deletion left the old text in the feed for good (only the details a verb shows were ever read).
-- Members are named from their accounts when read now, and events keep only their details: what was
-- kept is removed. Rows holding none of the keys are not touched.
update activity_objects set title = null where object_type = 'user' and title is not null;
update activity_events set data = data - array['name', 'title', 'filename']
where data ?| array['name', 'title', 'filename'];

-- migrate:down
-- Nothing to restore: the names and titles removed are kept nowhere else (a rollback's release shows
-- members untitled until their next event).
select 1;
