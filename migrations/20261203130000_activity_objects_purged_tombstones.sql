-- migrate:up transaction:false
-- The feed's objects (activity_objects) of tasks and files that no longer exist made tombstones, as
-- their `*.deleted` event would have (UpsertActivityObjects): the title erased, the row kept (ids are
-- never reused). A deleted project's purge emitted no such event for each of its tasks and files, so
-- before it tombstoned them itself (PurgeGroupEvents, TombstoneTaskObjects, TombstoneFileObjects in
-- sql/queries/projects.sql) their titles outlived the project. Objects of other types are not the
-- purge's and are left as they are; so are the tasks and files that exist (a project still being
-- purged holds its rows until its purge tombstones them).
--
-- 1,000 objects per transaction, walked by the primary key (object_type, object_id) (one statement,
-- not in a transaction block: the block commits each batch), so that no lock is held on many objects
-- for long, and a backfill cut short keeps what it did: running this again does the rest. An object
-- tombstoned already is left as it is. The feed writer never brings a title back to a tombstone; it
-- stores no object of a task or file created after this read it as gone (ids are never reused). It
-- may upsert a row a batch is updating (a late event of a deleted task): one waits for the other, and
-- should they deadlock (rare) the migration fails, and running it again resumes.
do $$
declare
    kind text;
    done_to bigint;
    batch_end bigint;
begin
    foreach kind in array array['file', 'task'] loop
        done_to := 0;
        loop
            select max(object_id) into batch_end
            from (
                select o.object_id from activity_objects o
                where o.object_type = kind and o.object_id > done_to
                order by o.object_id
                limit 1000
            ) batch;
            exit when batch_end is null;
            update activity_objects o
            set title = null, deleted = true
            where o.object_type = kind and o.object_id > done_to and o.object_id <= batch_end
              and not o.deleted
              and case kind
                      when 'task' then not exists (select 1 from tasks t where t.id = o.object_id)
                      else not exists (select 1 from project_files f where f.id = o.object_id)
                  end;
            done_to := batch_end;
            commit;
        end loop;
    end loop;
end
$$;

-- migrate:down transaction:false
-- Nothing to undo: an erased title cannot come back (nor should it).
