-- migrate:up
-- Alerts lost on the way to Telegram are told in the chat (app/domains/monitoring/delivery.py): a
-- delivery that ended 'uncertain' or 'failed' is never resent, so after the chat's next delivered
-- message the sender sends one notice (an alert of kind 'notice') saying how many may not have
-- arrived. told_through is the highest delivery id of that (configured) chat whose loss was told;
-- the next migration sets it for the chats that already have losses, so a deploy tells no old loss.
--
-- The previous release (a rolling deploy) ignores the column and never writes a notice; it reads
-- kinds as text. Locks: a constant default on a new column is metadata only (PostgreSQL 11+, no
-- rewrite); the kind check is replaced NOT VALID (nothing scanned under the lock) and validated by
-- 20261203110100. The check was declared inline, unnamed, in 20261130200000: PostgreSQL named it
-- monitoring_alerts_kind_check.
set local lock_timeout = '3s';

alter table monitoring_telegram_chats add column told_through bigint not null default 0;
alter table monitoring_alerts
    drop constraint monitoring_alerts_kind_check,
    add constraint monitoring_alerts_kind_check
        check (kind in ('alert', 'digest', 'report', 'notice')) not valid;

-- migrate:down
-- Refuses while notices are recorded (the old check would not hold): delete them first if they may go.
set local lock_timeout = '3s';
alter table monitoring_alerts
    drop constraint monitoring_alerts_kind_check,
    add constraint monitoring_alerts_kind_check check (kind in ('alert', 'digest', 'report'));
alter table monitoring_telegram_chats drop column told_through;
