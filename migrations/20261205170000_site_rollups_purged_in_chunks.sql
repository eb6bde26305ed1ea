-- migrate:up
-- A site's deletion cascaded to its rollups in the request's one statement: a site with 90 days of
-- visitor-hours (tens of millions of rows) outlasted the statement timeout and could never be deleted,
-- and held its row (and with it every site's rollup) meanwhile. The rollups of a deleted site are now
-- deleted in chunks by the reports domain's daily purge (PurgeSiteRollups*, found through the
-- `deleted_sites` tombstone the deletion leaves), as its raw page views already are. No rollup row of
-- a deleted site is written after its deletion commits: the rollup locks the sites it rolls up
-- (KeepSitesInWindow, `for key share`), and its statements join `sites`.
set local lock_timeout = '3s';
alter table page_view_hourly drop constraint page_view_hourly_site_id_fkey;
alter table page_view_dimension_hourly drop constraint page_view_dimension_hourly_site_id_fkey;
alter table page_view_hourly_visitors drop constraint page_view_hourly_visitors_site_id_fkey;
alter table page_view_visits drop constraint page_view_visits_site_id_fkey;

-- migrate:down
set local lock_timeout = '3s';
delete from page_view_hourly r where not exists (select 1 from sites s where s.id = r.site_id);
delete from page_view_dimension_hourly r where not exists (select 1 from sites s where s.id = r.site_id);
delete from page_view_hourly_visitors r where not exists (select 1 from sites s where s.id = r.site_id);
delete from page_view_visits r where not exists (select 1 from sites s where s.id = r.site_id);
alter table page_view_hourly
    add constraint page_view_hourly_site_id_fkey foreign key (site_id) references sites (id) on delete cascade;
alter table page_view_dimension_hourly
    add constraint page_view_dimension_hourly_site_id_fkey foreign key (site_id) references sites (id) on delete cascade;
alter table page_view_hourly_visitors
    add constraint page_view_hourly_visitors_site_id_fkey foreign key (site_id) references sites (id) on delete cascade;
alter table page_view_visits
    add constraint page_view_visits_site_id_fkey foreign key (site_id) references sites (id) on delete cascade;
