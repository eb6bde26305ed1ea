-- migrate:up transaction:false
-- The feed kept a member's name as the title of their object, and every event kept the data it was
-- emitted with: a task's title, a file's name, a project's name, a member's name. A rename or a
-- deletion left the old text in the feed for good (only the details a verb shows were ever read).
-- Members are named from their accounts when read now, and events keep only their details: what was
-- kept is removed.
--
-- 1,000 events per transaction, walked by id (one statement, not in a transaction block: the block
-- commits each batch, which PostgreSQL refuses once another statement shares the query string: keep
-- it the only statement of this section), so that no lock is held on many rows for long and a
-- project's purge waits for one batch at most. Running it again finds nothing left (an event the previous release's worker
-- still stores with its data is cleaned by a run of the same statement after that release is gone).
do $$
declare
    done_to bigint := 0;
    batch_end bigint;
begin
    update activity_objects set title = null where object_type = 'user' and title is not null;
    commit;
    loop
        select max(id) into batch_end
        from (select id from activity_events where id > done_to order by id limit 1000) b;
        exit when batch_end is null;
        update activity_events set data = data - array['name', 'title', 'filename']
        where id > done_to and id <= batch_end and data ?| array['name', 'title', 'filename'];
        done_to := batch_end;
        commit;
    end loop;
end
$$;

-- migrate:down
-- Nothing to restore: the names and titles removed are kept nowhere else (a rollback's release shows
-- members untitled until their next event).
select 1;
