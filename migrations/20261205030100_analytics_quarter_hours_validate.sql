-- migrate:up
-- The checks 20261205030000 added `not valid`, checked on every row (the existing rows have nulls,
-- which pass): a scan under SHARE UPDATE EXCLUSIVE, so reads and writes go on.
set local lock_timeout = '3s';

alter table page_view_hourly validate constraint page_view_hourly_quarters;
alter table page_view_hourly_visitors validate constraint page_view_hourly_visitors_seen_quarters;

-- migrate:down
-- Nothing to undo: 20261205030000's down drops the columns and their checks.
