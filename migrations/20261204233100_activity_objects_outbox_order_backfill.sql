-- migrate:up transaction:false
-- activity_objects.outbox_id for the rows written before it existed: the outbox id of the event whose
-- feed id the row's seq holds. A row whose event is gone (purged) keeps none: any later event's title
-- replaces it.
--
-- 1,000 rows per transaction, walked by the primary key (one statement, not in a transaction block:
-- the block commits each batch), so that no lock is held on many rows for long; a backfill cut short
-- keeps what it did, and running it again does the rest. A row the writer gave an outbox id meanwhile
-- is left as it is.
do $$
declare
    done_type text := '';
    done_id bigint := -1;
    last_type text;
    last_id bigint;
begin
    loop
        select b.object_type, b.object_id into last_type, last_id
        from (
            select o.object_type, o.object_id from activity_objects o
            where (o.object_type, o.object_id) > (done_type, done_id)
            order by o.object_type, o.object_id
            limit 1000
        ) b
        order by b.object_type desc, b.object_id desc
        limit 1;
        exit when last_type is null;
        update activity_objects o
        set outbox_id = e.outbox_id
        from activity_events e
        where e.id = o.seq
          and o.outbox_id is null
          and (o.object_type, o.object_id) > (done_type, done_id)
          and (o.object_type, o.object_id) <= (last_type, last_id);
        done_type := last_type;
        done_id := last_id;
        commit;
    end loop;
end
$$;

-- migrate:down transaction:false
update activity_objects set outbox_id = null;
