-- migrate:up
-- A task's search document is made of its text in NFKC form, as the search's query is
-- (app/domains/tasks/search.py): a title written decomposed (José as J-o-s-e and a combining accent,
-- as macOS and some input methods send it) or in full-width letters was found only by a query
-- typed the same way. The documents stored before are made again by 20261206110100 (only those of
-- tasks whose text is not in NFKC form: the others do not change); until then an old document
-- still matches what it matched. One definition, still used by the trigger that stores documents.
create or replace function task_search_document(title text, description text) returns tsvector
language sql immutable parallel safe
return setweight(to_tsvector('simple', normalize(title, nfkc)), 'A')
    || setweight(to_tsvector('simple', normalize(description, nfkc)), 'B');

-- migrate:down
create or replace function task_search_document(title text, description text) returns tsvector
language sql immutable parallel safe
return setweight(to_tsvector('simple', title), 'A') || setweight(to_tsvector('simple', description), 'B');
