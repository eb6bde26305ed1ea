-- migrate:up
-- Each task's full-text document, stored: the task list's search (`q`, ListProjectTasks) matches it
-- instead of `task_search_document(t.title, t.description)`, which every query the expression index
-- could not answer alone (a phrase, a pure exclusion, a common word) computed again for each task of
-- the project, ~5 ms for a 20,000-character description: 3,000 such tasks held a connection and a
-- core for the whole statement timeout per search.
--
-- A table beside tasks, not a column of it: tasks' queries select `t.*` (sqlc lists every column),
-- and a document (tens of kilobytes) would then be read, sent and decoded with every task read.
-- project_id is the task's (tasks never move between projects): the search reads only its project's
-- documents, by this index or by task_id, never every project's.
--
-- The triggers store the document of every task written from now on, whichever release writes it
-- (the previous one still serves during a rolling deploy). The documents of the tasks that exist
-- already are stored by the next migration (20261203040100), in batches; the code that searches the
-- stored documents starts only once it is applied (`require_schema`).
--
-- Locks: the foreign key and the triggers take SHARE ROW EXCLUSIVE on tasks (writes wait, reads do
-- not) for an instant; the table is new and empty, so its indexes are built at once.
set local lock_timeout = '3s';

create table task_search_documents (
    task_id bigint primary key references tasks (id) on delete cascade,
    project_id bigint not null,
    document tsvector not null
);

create index task_search_documents_project_idx on task_search_documents (project_id);
create index task_search_documents_document_idx on task_search_documents using gin (document);

create function store_task_search_document() returns trigger
language plpgsql as $$
begin
    insert into task_search_documents (task_id, project_id, document)
    values (new.id, new.project_id, task_search_document(new.title, new.description))
    on conflict (task_id) do update set project_id = excluded.project_id, document = excluded.document;
    return null;
end;
$$;

create trigger tasks_store_search_document
after insert on tasks
for each row execute function store_task_search_document();

-- Only when the text changes: UpdateTask sets title and description in every update (unchanged ones
-- to their old values), and a change of status must not compute the document again.
create trigger tasks_restore_search_document
after update of title, description, project_id on tasks
for each row when (
    old.title is distinct from new.title
    or old.description is distinct from new.description
    or old.project_id is distinct from new.project_id
)
execute function store_task_search_document();

-- migrate:down
set local lock_timeout = '3s';
drop trigger tasks_restore_search_document on tasks;
drop trigger tasks_store_search_document on tasks;
drop function store_task_search_document();
drop table task_search_documents;
