-- migrate:up
-- The kind check of 20261203110000 (which allows 'notice') checked on every alert: a scan under SHARE
-- UPDATE EXCLUSIVE, so reads and writes go on.
set local lock_timeout = '3s';

alter table monitoring_alerts validate constraint monitoring_alerts_kind_check;

-- migrate:down
-- Nothing to undo: 20261203110000's down replaces the constraint.
