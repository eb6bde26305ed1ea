-- migrate:up transaction:false
-- monitoring_budget_periods.digest_id references monitoring_alerts (on delete set null) without an
-- index: every alert the retention deletes (PurgeAlertsBefore, 10,000 per chunk) made the foreign key
-- scan the whole periods table (up to ~4,300 per channel over 30 days): 575 ms of an 824 ms chunk
-- with 720 periods. Partial: most periods name no digest, and `digest_id = $1` implies it is set.
-- Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists monitoring_budget_periods_digest_idx
    on monitoring_budget_periods (digest_id) where digest_id is not null;

-- migrate:down transaction:false
drop index concurrently if exists monitoring_budget_periods_digest_idx;
