-- migrate:up
-- The hourly purge deletes noise-budget periods and alert-rule firings past the retention by their
-- time (group activity has its index already): without these it would read each table in full.
create index monitoring_budget_periods_ends_idx on monitoring_budget_periods (ends_at);
create index monitoring_rule_fires_fired_idx on monitoring_rule_fires (last_fired_at);

-- migrate:down
drop index monitoring_rule_fires_fired_idx;
drop index monitoring_budget_periods_ends_idx;
