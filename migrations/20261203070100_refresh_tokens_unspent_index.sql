-- migrate:up transaction:false
-- A user's live refresh tokens, one per session that is not over (neither revoked nor spent): what a
-- sign-in reads to end the sessions past SESSIONS_PER_USER_MAX (ListSessionsBeyond) and revoking all
-- of a user's sessions reads to find them (ListLiveUserFamilies). The (user_id) index on tokens not
-- revoked (refresh_tokens_live_user_idx) holds every spent token of every live session as well, so
-- each sign-in of a user with a long session read its hundreds of thousands of spent tokens.
-- refresh_tokens_live_user_idx stays for the previous release's ListLiveUserFamilies during a rolling
-- deploy; nothing of this release reads it. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists refresh_tokens_unspent_user_idx on refresh_tokens (user_id)
where revoked_at is null and used_at is null;

-- migrate:down transaction:false
drop index concurrently if exists refresh_tokens_unspent_user_idx;
