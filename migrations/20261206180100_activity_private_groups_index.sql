-- migrate:up transaction:false
-- The retention of a reader's own feed groups (ActivityService.purge_private_groups, a daily cron)
-- deletes the groups no project holds FEED_PRIVATE_RETENTION_DAYS after their last event, oldest
-- first, in chunks: without this index every chunk would read and sort all the groups (the first run
-- on an old install: a year's backlog). Partial: a project's groups are never read by age. Built
-- concurrently (the feed keeps grouping meanwhile), one index per file (see 20261202010500).
create index concurrently if not exists activity_groups_private_last_idx
    on activity_groups (last_at) where project_id is null;

-- migrate:down transaction:false
drop index concurrently if exists activity_groups_private_last_idx;
