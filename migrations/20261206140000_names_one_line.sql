-- migrate:up transaction:false
-- Names and titles stored before 368c2ac made one line whose direction is their own, as the API has
-- accepted them since (`ONE_LINE`, app/core/types.py): a control character (a newline, a tab, an
-- escape, C1) or a run of them becomes one space, a character that changes the direction of the text
-- after it (an embedding, an override, an isolate) goes, and the ends are trimmed. Until then such a
-- row was shown as stored (a right-to-left override in a task title turned the rest of other people's
-- feed sentences around), and a client that sent a row's unchanged name back in a PATCH got a 400.
-- A name left with nothing visible (only spaces, format or invisible characters: the API's blank,
-- `_BLANK` in app/core/types.py, the class below) becomes a placeholder. The change counts as an
-- edit: updated_at moves (a client syncing by `updated_after` sees it), and so does the version of
-- tasks, projects and products (their trigger: an If-Match of the old version no longer holds);
-- the feed's copies of titles and names
-- (activity_objects of tasks, projects and users) are made alike. No feed event is written: nobody
-- edited. (An event of the previous release still on its way writes its title as the feed writer
-- now stores every title: one line, app.core.types.one_line.)
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
        array['tasks', 'id', 'title', 'Untitled task', ', updated_at = now()'],
        array['projects', 'id', 'name', 'Untitled project', ', updated_at = now()'],
        array['products', 'id', 'name', 'Unnamed product', ', updated_at = now()'],
        array['users', 'id', 'display_name', 'Unnamed', ', updated_at = now()']
    ];
    kind text;
    done_to bigint;
    batch_end bigint;
    not_in_a_line constant text := '[\x01-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]';
    -- %1$s: the value made one line; %2$L: the placeholder when nothing visible is left
    cleaned constant text :=
        $sql$btrim(regexp_replace(regexp_replace(%1$I, '[\u202a-\u202e\u2066-\u2069]', '', 'g'),
                                 '[\x01-\x1f\x7f-\x9f\u2028\u2029]+', ' ', 'g'))$sql$;
    one_line constant text :=
        $sql$case when %1$s ~ '[^\u0009-\u000d\u001c-\u0020\u0085\u00a0\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u115f-\u1160\u1680\u17b4-\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]' then %1$s else %2$L end$sql$;
begin
    foreach spec slice 1 in array specs loop
        done_to := 0;
        loop
            execute format('select max(%1$I) from (select %1$I from %2$I where %1$I > $1 order by %1$I limit 1000) b',
                           spec[2], spec[1])
                into batch_end using done_to;
            exit when batch_end is null;
            execute format('update %I set %I = %s%s where %I > $1 and %I <= $2 and %I ~ $3',
                           spec[1], spec[3], format(one_line, format(cleaned, spec[3]), spec[4]), spec[5],
                           spec[2], spec[2], spec[3])
                using done_to, batch_end, not_in_a_line;
            done_to := batch_end;
            commit;
        end loop;
    end loop;
    foreach kind in array array['task', 'project', 'user'] loop
        done_to := 0;
        loop
            select max(object_id) into batch_end
            from (select o.object_id from activity_objects o
                  where o.object_type = kind and o.object_id > done_to
                  order by o.object_id limit 1000) b;
            exit when batch_end is null;
            execute format('update activity_objects set title = %s'
                           ' where object_type = $4 and object_id > $1 and object_id <= $2 and title ~ $3',
                           format(one_line, format(cleaned, 'title'),
                                  case kind when 'user' then 'Unnamed' else 'Untitled' end))
                using done_to, batch_end, not_in_a_line, kind;
            done_to := batch_end;
            commit;
        end loop;
    end loop;
end
$$;

-- migrate:down transaction:false
-- Nothing to undo: the characters removed are those the API refuses.
