-- migrate:up
-- When a timed ignore ended with no event to end it (the periodic expiry made the group unresolved
-- again): the group's next event still reopens it, with the 'unignored' transition and the reopened
-- alert, as it would have had the expiry not run first. Cleared by any change of the group's state.
alter table monitoring_groups add column ignore_ended_at timestamptz;

-- migrate:down
alter table monitoring_groups drop column ignore_ended_at;
