-- migrate:up
-- An installation upgraded from a release before 20261205140000 ran every demo seed at each start of
-- `just serve`; demo_seeds came empty, so the first start after the upgrade ran them all once more
-- and brought back the demo projects and site a user had deleted (the upgrade review). Where the
-- demo members exist (only a seed creates them: such a release has started) and nothing is recorded
-- yet, a seed is recorded as run where its area holds data or did: the projects' (its release made
-- the members), the sites' (a site, or a deleted one's record), the products', the feed's (an event).
-- A seed that came with a later release than the installation's finds its area unused and still
-- runs once; one whose area the user filled is not added to it. A new installation has no users
-- when its migrations run, and one recorded already is left as it is.
insert into demo_seeds (module)
select seeded.module
from (
    select 'projects' as module, true as used
    union all select 'sites', exists (select 1 from sites) or exists (select 1 from deleted_sites)
    union all select 'products', exists (select 1 from products)
    union all select 'activity', exists (select 1 from activity_events)
) seeded
where seeded.used
  and exists (select 1 from users where email in ('ana@example.com', 'ben@example.com'))
  and not exists (select 1 from demo_seeds)
on conflict (module) do nothing;

-- migrate:down
-- Nothing to undo: the records say what an earlier release did.
