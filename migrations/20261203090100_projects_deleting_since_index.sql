-- migrate:up transaction:false
-- The projects being deleted (20261203090000): the hourly cron finds the ones whose purge job was lost
-- (ListProjectsToPurge) among them only, without reading every project. Partial: live projects (all
-- but a few) are not in it. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists projects_deleting_since_idx
    on projects (deleting_since) where deleting_since is not null;

-- migrate:down transaction:false
drop index concurrently if exists projects_deleting_since_idx;
