-- migrate:up transaction:false
-- Names and titles stored before 368c2ac made one line whose direction is their own, as the API has
-- accepted them since (`ONE_LINE`, app/core/types.py): a control character (a newline, a tab, an
-- escape, C1) or a run of them becomes one space, a character that changes the direction of the text
-- after it (an embedding, an override, an isolate) goes, and the ends are trimmed. Until then such a
-- row was shown as stored (a right-to-left override in a task title turned the rest of other people's
-- feed sentences around), and a client that sent a row's unchanged name back in a PATCH got a 400.
-- A name left empty becomes a placeholder. Tasks, projects and products count the change as an edit
-- (version and updated_at: a client syncing by `updated_after` sees it, an If-Match of the old
-- version no longer does); users' updated_at too; the feed's copies of titles (activity_objects) are
-- made alike. No feed event is written: nobody edited.
--
-- 1,000 rows per transaction, walked by key (one statement, not in a transaction block: the block
-- commits each batch), so that no lock is held on many rows for long; an edit meanwhile waits for its
-- row's batch or is read by it (the update evaluates its row as it finds it). Running it again finds
-- nothing left to change.
do $$
declare
    -- (table, key, column, placeholder, what else an edit sets)
    spec text[];
    specs constant text[][] := array[
        array['tasks', 'id', 'title', 'Untitled task', ', version = version + 1, updated_at = now()'],
        array['projects', 'id', 'name', 'Untitled project', ', version = version + 1, updated_at = now()'],
        array['products', 'id', 'name', 'Unnamed product', ', version = version + 1, updated_at = now()'],
        array['users', 'id', 'display_name', 'Unnamed', ', updated_at = now()']
    ];
    kind text;
    done_to bigint;
    batch_end bigint;
    not_in_a_line constant text := '[\x01-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]';
    one_line constant text :=
        $sql$coalesce(nullif(btrim(regexp_replace(regexp_replace(%1$I, '[\u202a-\u202e\u2066-\u2069]', '', 'g'),
                                                  '[\x01-\x1f\x7f-\x9f\u2028\u2029]+', ' ', 'g')), ''),
                      %2$L)$sql$;
begin
    foreach spec slice 1 in array specs loop
        done_to := 0;
        loop
            execute format('select max(%1$I) from (select %1$I from %2$I where %1$I > $1 order by %1$I limit 1000) b',
                           spec[2], spec[1])
                into batch_end using done_to;
            exit when batch_end is null;
            execute format('update %I set %I = %s%s where %I > $1 and %I <= $2 and %I ~ $3',
                           spec[1], spec[3], format(one_line, spec[3], spec[4]), spec[5], spec[2], spec[2], spec[3])
                using done_to, batch_end, not_in_a_line;
            done_to := batch_end;
            commit;
        end loop;
    end loop;
    foreach kind in array array['task', 'project'] loop
        done_to := 0;
        loop
            select max(object_id) into batch_end
            from (select o.object_id from activity_objects o
                  where o.object_type = kind and o.object_id > done_to
                  order by o.object_id limit 1000) b;
            exit when batch_end is null;
            execute format('update activity_objects set title = %s'
                           ' where object_type = $4 and object_id > $1 and object_id <= $2 and title ~ $3',
                           format(one_line, 'title', 'Untitled'))
                using done_to, batch_end, not_in_a_line, kind;
            done_to := batch_end;
            commit;
        end loop;
    end loop;
end
$$;

-- migrate:down transaction:false
-- Nothing to undo: the characters removed are those the API refuses.
