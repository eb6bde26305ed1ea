-- migrate:up
-- An installation upgraded from a release before 20261205140000 ran every demo seed at each start of
-- `just serve`; demo_seeds came empty, so the first start after the upgrade ran them all once more
-- and brought back the demo projects and site a user had deleted (the upgrade review). Where the
-- demo members exist (only a seed creates them: such a release has started) and nothing is recorded
-- yet, the seeds every such release ran are recorded as run. A new installation has no users when
-- its migrations run, and one recorded already is left as it is.
insert into demo_seeds (module)
select seeded.module
from unnest(array['projects', 'sites', 'products', 'activity']) as seeded(module)
where exists (select 1 from users where email in ('ana@example.com', 'ben@example.com'))
  and not exists (select 1 from demo_seeds)
on conflict (module) do nothing;

-- migrate:down
-- Nothing to undo: the records say what an earlier release did.
