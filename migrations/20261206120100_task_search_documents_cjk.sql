-- migrate:up transaction:false
-- The stored documents of tasks with CJK text in their title or description made again with
-- 20261206120000's definition, 100 tasks per transaction, as 20261206110100 made the NFKC ones again
-- (one statement, not in a transaction block: the block commits each batch): no lock is held on
-- many tasks for long, a run cut short keeps what it did, and running it again redoes the batches
-- with CJK text (the same documents again). Until then an old document matches what it matched.
-- CJK text in NFKC form, as the document is made of: "㍿" (one character) is 株式会社.
do $$
declare
    done_to bigint := 0;
    batch_end bigint;
begin
    loop
        select max(id) into batch_end
        from (select id from tasks where id > done_to order by id limit 100) batch;
        exit when batch_end is null;
        -- FOR SHARE first, as in 20261206110100: an edit under way commits before this batch reads
        -- its text, or waits for the batch's commit.
        perform 1 from tasks t
        where t.id > done_to and t.id <= batch_end
          and search_characters(normalize(t.title || ' ' || t.description, nfkc)) <> ''
        order by t.id
        for share;
        update task_search_documents d
        set document = task_search_document(t.title, t.description)
        from tasks t
        where t.id = d.task_id
          and t.id > done_to and t.id <= batch_end
          and search_characters(normalize(t.title || ' ' || t.description, nfkc)) <> '';
        done_to := batch_end;
        commit;
    end loop;
end
$$;

-- migrate:down transaction:false
-- Nothing to undo: the documents match either definition's queries of non-CJK text as before.
