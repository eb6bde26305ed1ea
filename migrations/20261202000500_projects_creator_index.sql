-- migrate:up
-- The projects a user created, counted against PROJECTS_PER_USER_MAX at each creation.
create index projects_owner_idx on projects (owner_id, id);

-- migrate:down
drop index projects_owner_idx;
