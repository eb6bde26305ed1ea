-- migrate:up
-- A Telegram group upgraded to a supergroup gets a new chat id (the Bot API answers the old one with
-- 400 and parameters.migrate_to_chat_id): the configured chat's row keeps where it moved, and the
-- sender delivers there until TELEGRAM_CHAT_ID names the new id. Nullable, no default: no rewrite.
set local lock_timeout = '3s';
alter table monitoring_telegram_chats add column migrated_to text;

-- migrate:down
set local lock_timeout = '3s';
alter table monitoring_telegram_chats drop column migrated_to;
