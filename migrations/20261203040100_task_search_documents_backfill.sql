-- migrate:up transaction:false
-- The stored documents of the tasks written before 20261203040000's triggers, 100 tasks per
-- transaction (one statement, not in a transaction block: the block commits each batch), so that no
-- lock is held on many tasks for long, and a backfill cut short keeps what it stored: running this
-- again stores the rest. Each batch reads its tasks FOR KEY SHARE, in id order (the order a deletion
-- of their project locks them in): a task deleted meanwhile is skipped, an edited one is read as
-- edited, and it cannot be deleted before the batch commits (the foreign key). A document the
-- triggers stored meanwhile is kept (theirs is of the task as edited). Until this has run, the
-- search of the release before 20261203040000 is still the one serving.
do $$
declare
    done_to bigint := 0;
    batch_end bigint;
begin
    loop
        select max(id) into batch_end
        from (select id from tasks where id > done_to order by id limit 100) batch;
        exit when batch_end is null;
        insert into task_search_documents (task_id, project_id, document)
        select t.id, t.project_id, task_search_document(t.title, t.description)
        from tasks t
        where t.id > done_to and t.id <= batch_end
          and not exists (select 1 from task_search_documents d where d.task_id = t.id)
        order by t.id
        for key share of t
        on conflict (task_id) do nothing;
        done_to := batch_end;
        commit;
    end loop;
end
$$;

-- migrate:down transaction:false
-- Nothing to undo: 20261203040000's down drops the documents with their table.
