-- migrate:up
-- The period each daily report covered, as sent: the next report starts where the last one ended,
-- whatever MONITORING_REPORT_TIME or _TIMEZONE say by then (recomputing the end from today's
-- settings lost or doubled the hours between two report times after a change). Null for the reports
-- recorded before (the next one then starts at that day's report time under the current settings).
-- Adding nullable columns without a default rewrites nothing.
set local lock_timeout = '3s';

alter table monitoring_reports
    add column since timestamptz,
    add column until timestamptz,
    add constraint monitoring_reports_period_check check (since < until);

-- migrate:down
alter table monitoring_reports
    drop constraint monitoring_reports_period_check,
    drop column since,
    drop column until;
