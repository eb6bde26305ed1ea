-- migrate:up transaction:false
-- The stored documents of the tasks written before 20261203040000's triggers, 100 tasks per
-- transaction (one statement, not in a transaction block: the block commits each batch), so that no
-- lock is held on many tasks for long, and a backfill cut short keeps what it stored: running this
-- again stores the rest. Each batch reads its tasks FOR KEY SHARE, in id order: a task deleted
-- meanwhile is skipped, and none can be deleted before the batch commits (the foreign key). A task
-- edited meanwhile may be read with its old text, but the edit's trigger stores its document too
-- (an upsert), so the newer text wins in either order, as it does over a document the triggers
-- stored first (kept). A project's deletion locks its tasks in its own scan order, so a batch may
-- deadlock with one (rare): the migration then fails, and running it again resumes. Until this has
-- run, the search of the release before 20261203040000 is still the one serving.
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
