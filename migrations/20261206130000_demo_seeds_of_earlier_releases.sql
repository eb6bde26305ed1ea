-- migrate:up
-- An installation upgraded from a release before 20261205140000 ran every demo seed at each start of
-- `just serve`; demo_seeds came empty, so the first start after the upgrade ran them all once more
-- and brought back the demo projects and site a user had deleted (the upgrade review). Where the
-- demo members exist (only a seed creates them: such a release has started) and nothing is recorded
-- yet, a seed is recorded as run where its area was ever used: the projects' (its release made the
-- members), the sites', the products' and the feed's where their table's id sequence was ever drawn
-- from (rows deleted, purged or forgotten since leave it drawn: a deleted site's record is forgotten
-- after two days). A seed that came with a later release than the installation's finds its area
-- unused and still runs once; one whose area the user filled is not added to it. A new installation
-- has no users when its migrations run, and one recorded already is left as it is.
insert into demo_seeds (module)
select seeded.module
from (
    select 'projects' as module, true as used
    union all select 'sites', pg_sequence_last_value(pg_get_serial_sequence('public.sites', 'id')::regclass) is not null
    union all select 'products',
                     pg_sequence_last_value(pg_get_serial_sequence('public.products', 'id')::regclass) is not null
    union all select 'activity',
                     pg_sequence_last_value(pg_get_serial_sequence('public.activity_events', 'id')::regclass) is not null
) seeded
where seeded.used
  and exists (select 1 from users where email in ('ana@example.com', 'ben@example.com'))
  and not exists (select 1 from demo_seeds)
on conflict (module) do nothing;

-- migrate:down
-- Nothing to undo: the records say what an earlier release did.
