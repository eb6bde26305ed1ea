-- migrate:up transaction:false
-- monitoring_reports.alert_id references monitoring_alerts (on delete set null) without an index:
-- each alert the retention deletes scanned the reports table (one row per day, kept for ever). Small
-- today, growing a row a day. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists monitoring_reports_alert_idx
    on monitoring_reports (alert_id) where alert_id is not null;

-- migrate:down transaction:false
drop index concurrently if exists monitoring_reports_alert_idx;
