-- migrate:up transaction:false
-- The stored documents of tasks whose title or description is not in NFKC form made again with
-- 20261206110000's definition, 100 tasks per transaction (one statement, not in a transaction block:
-- the block commits each batch), in id order, as 20261203040100 stored them: no lock is held on many
-- tasks for long, a run cut short keeps what it did, and running it again does the rest (a task
-- already in NFKC form has nothing to redo). A task edited meanwhile has its document stored by its
-- edit's trigger, with the new definition, before or after the batch that holds it (below).
do $$
declare
    done_to bigint := 0;
    batch_end bigint;
begin
    loop
        select max(id) into batch_end
        from (select id from tasks where id > done_to order by id limit 100) batch;
        exit when batch_end is null;
        -- The batch's tasks first, FOR SHARE: an edit under way commits before (and the UPDATE
        -- below, a statement of its own, then reads its new text) or waits for this batch's commit.
        -- Locked by the UPDATE's join alone, a task edited meanwhile was read as it was before the
        -- edit, and its document made of the old text written over the one the edit stored.
        perform 1 from tasks t
        where t.id > done_to and t.id <= batch_end
          and (t.title is not nfkc normalized or t.description is not nfkc normalized)
        order by t.id
        for share;
        update task_search_documents d
        set document = task_search_document(t.title, t.description)
        from tasks t
        where t.id = d.task_id
          and t.id > done_to and t.id <= batch_end
          and (t.title is not nfkc normalized or t.description is not nfkc normalized);
        done_to := batch_end;
        commit;
    end loop;
end
$$;

-- migrate:down transaction:false
-- Nothing to undo: the documents match either definition's queries as well as before.
