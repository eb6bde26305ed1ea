-- migrate:up transaction:false
-- A session's (refresh-token family's) tokens in issue order. Every rotation adds a row and a live
-- session keeps all its spent ones (reuse detection) until it is over: a session refreshed every few
-- seconds for SESSION_MAX_AGE_S holds hundreds of thousands. Each rotation reads the family's first
-- token (GetFamilyState: when the session began) and, for a spent token presented again, the token
-- after it (IsRefreshTokenRecentlySuperseded): with (family_id) alone both read and sorted every row
-- of the family; with this index each reads one entry. It serves every lookup of the (family_id)
-- index too, which 20261203070300 drops. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists refresh_tokens_family_order_idx on refresh_tokens (family_id, id);

-- migrate:down transaction:false
drop index concurrently if exists refresh_tokens_family_order_idx;
