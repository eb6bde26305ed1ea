-- migrate:up transaction:false
-- The revoked tokens of each session: every rotation asks whether any token of its session was
-- revoked (GetFamilyState), which read every row of the family through the (family_id) index. A live
-- session has none here, an ended one all its tokens until they are purged. Concurrently, one index
-- per file (see 20261202010500).
create index concurrently if not exists refresh_tokens_revoked_family_idx on refresh_tokens (family_id)
where revoked_at is not null;

-- migrate:down transaction:false
drop index concurrently if exists refresh_tokens_revoked_family_idx;
