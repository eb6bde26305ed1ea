-- migrate:up transaction:false
-- The stored documents of tasks with CJK text in their title or description made again with
-- 20261206120000's definition, 100 tasks per transaction (one statement, not in a transaction block:
-- the block commits each batch): no lock is held on many tasks for long, and a run cut short keeps
-- what it did. Until then an old document matches what it matched; and the documents made again
-- keep the previous definition's words, so the previous release's queries (a CJK run as one word)
-- still find them, while it serves beside this one.
--
-- The statement runs as long as the table takes to walk (tens of seconds for 60,000 tasks of 2 KB;
-- dbmate's sessions have no statement timeout, app.core.migrate.dbmate_url). Running it again walks
-- the table again, but writes only the documents that differ from the definition's.
--
-- Which tasks: those whose text holds a character of search.py's CJK class or one NFKC folds into it
-- (Kangxi radicals, enclosed and squared CJK, half-width kana, compatibility ideographs: "㍿" is
-- 株式会社), tested on the text as written, once per task; a task that only looks so is made again
-- to the same document.
do $$
declare
    done_to bigint := 0;
    batch_end bigint;
    batch bigint[];
begin
    loop
        select max(id) into batch_end
        from (select id from tasks where id > done_to order by id limit 100) ids;
        exit when batch_end is null;
        -- FOR SHARE first, as in 20261206110100: an edit under way commits before this batch reads
        -- its text, or waits for the batch's commit.
        select coalesce(array_agg(t.id), '{}') into batch
        from (
            select t.id from tasks t
            where t.id > done_to and t.id <= batch_end
              and (t.title || ' ' || t.description) ~ '[\u1100-\u11ff\u2e80-\u2fdf\u3005-\u3007\u3038-\u303a\u3040-\u30ff\u3130-\u319f\u31f0-\u33ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff65-\uffdc\U0001f200-\U0001f2ff\U00020000-\U0003134f]'
            order by t.id
            for share
        ) t;
        update task_search_documents d
        set document = made.document
        from (
            select t.id, task_search_document(t.title, t.description) as document
            from tasks t where t.id = any(batch)
        ) made
        where made.id = d.task_id and d.document is distinct from made.document;
        done_to := batch_end;
        commit;
    end loop;
end
$$;

-- migrate:down transaction:false
-- Nothing to undo: the documents match either definition's queries as before.
