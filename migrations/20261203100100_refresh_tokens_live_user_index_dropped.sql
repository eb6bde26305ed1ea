-- migrate:up transaction:false
-- A user's live sessions are read through refresh_tokens_unspent_user_idx (20261203070100) since the
-- last release; this index, which holds every spent token of every live session too, was kept one
-- release for the release before during a rolling deploy and is only a cost on every token a
-- rotation inserts. Dropped concurrently (see 20261202011000).
drop index concurrently if exists refresh_tokens_live_user_idx;

-- migrate:down transaction:false
create index concurrently if not exists refresh_tokens_live_user_idx on refresh_tokens (user_id)
where revoked_at is null;
