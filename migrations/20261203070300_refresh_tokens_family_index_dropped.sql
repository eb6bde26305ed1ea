-- migrate:up transaction:false
-- refresh_tokens_family_order_idx (family_id, id), built by 20261203070000, serves every lookup this
-- (family_id) index served, the previous release's included (its leading column): this one is only a
-- cost on every token a rotation inserts or spends. Dropped concurrently (see 20261202011000).
drop index concurrently if exists refresh_tokens_family_idx;

-- migrate:down transaction:false
create index concurrently if not exists refresh_tokens_family_idx on refresh_tokens (family_id);
