-- migrate:up
-- An invitation is accepted with a secret token the inviter hands to the invitee: registration
-- proves no control of an email (there is no mail), so the address alone let whoever registered it
-- first join the project. Only the token's SHA-256 (32 bytes) is stored; inviting the same email
-- again replaces it, which invalidates the token handed out before.
--
-- Invitations waiting before this migration have no token (null) and can never be accepted. They
-- are kept, not expired: owners still see whom they invited and invite the email again to issue a
-- token; invitees may still decline them. The previous release, serving during the deploy, neither
-- reads nor writes the column (it still accepts without a token until it is replaced).
-- A nullable column without a default only changes the catalogue: ACCESS EXCLUSIVE for an instant.
set local lock_timeout = '3s';
alter table project_invitations add column token_sha256 bytea;

-- migrate:down
set local lock_timeout = '3s';
alter table project_invitations drop column token_sha256;
