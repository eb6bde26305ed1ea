-- migrate:up
-- The losses of before this deploy count as told (20261203110000): each chat with a delivery that
-- ended 'uncertain' or 'failed' gets told_through = the highest such id (its row is created if it has
-- none). Deliveries still pending or being sent are not counted: one lost after the deploy is told
-- (unless an older loss of its chat came after it).
-- Row locks only; monitoring_telegram_chats holds a row per chat (a few).
insert into monitoring_telegram_chats (chat_id, told_through)
select d.chat_id, max(d.id)
from monitoring_deliveries d
where d.status in ('uncertain', 'failed')
group by d.chat_id
on conflict (chat_id) do update
set told_through = greatest(monitoring_telegram_chats.told_through, excluded.told_through);

-- migrate:down
-- Nothing to undo: the column goes with 20261203110000's down.
