-- migrate:up
-- A task's search document holds Chinese, Japanese and Korean text as words a query can find
-- (app/domains/tasks/search.py). These scripts put no spaces between words, and PostgreSQL's parser
-- read a whole run as one word: "東京都の会議" was found only by that exact run, never by "東京" or
-- "会議". `search_words` writes each run of two or more CJK characters as its overlapping pairs
-- ("東京 京都 都の の会 会議"), set apart from the text around it; the document adds every CJK
-- character alone (a one-character query), after the text so that phrases still match pair by pair.
-- The class is `CJK` in search.py, the query's side. The documents stored before are made again by
-- 20261206120100 (only those of tasks with CJK text: the others do not change).
--
-- The pairs are made in one pass over the run's characters: `substr(run, i, 2)` for each i read a
-- multibyte string from its start each time, and a 20,000-character description of "㍿" (80,000 CJK
-- characters in NFKC form) took a minute, past the statement timeout, so its task could not be saved
-- (a review). A document's positions stop at 16,383 (PostgreSQL's limit): in a text longer than
-- that, a run further on is still found by one or two characters, not by a phrase of three or more.
create function search_words(body text) returns text
language sql immutable parallel safe
return coalesce((
    select string_agg(
        case when length(p.piece) > 1
                  and p.piece ~ '^[\u1100-\u11ff\u3005-\u3007\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]'
             then (select string_agg(pair.first || pair.second, ' ' order by pair.i)
                   from (select c as first, lead(c) over (order by i) as second, i
                         from unnest(string_to_array(p.piece, null)) with ordinality as t(c, i)) pair
                   where pair.second is not null)
             else p.piece
        end,
        ' ' order by m.n)
    from regexp_matches(
        body,
        '[\u1100-\u11ff\u3005-\u3007\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]+|[^\u1100-\u11ff\u3005-\u3007\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]+',
        'g'
    ) with ordinality as m(parts, n)
    cross join lateral (select m.parts[1]) as p(piece)
), '');

create function search_characters(body text) returns text
language sql immutable parallel safe
return coalesce((
    select string_agg(m.parts[1], ' ')
    from regexp_matches(
        body,
        '[\u1100-\u11ff\u3005-\u3007\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]',
        'g'
    ) as m(parts)
), '');

-- Expand, then contract: the previous release, still serving during a rolling deploy (and after a
-- rollback of the code), queries a CJK run as one word. So a title or description with CJK characters
-- keeps the words of the previous definition too, right after its new ones (whose positions the pair
-- phrases need; the title's before the description, so that a long description does not push them
-- past the positions' limit); a text without keeps exactly its previous document. A later migration
-- drops them once no release that queries whole runs can serve.
create or replace function task_search_document(title text, description text) returns tsvector
language sql immutable parallel safe
return setweight(to_tsvector('simple', search_words(normalize(title, nfkc))), 'A')
    || setweight(to_tsvector('simple', search_characters(normalize(title, nfkc))), 'A')
    || case when search_characters(normalize(title, nfkc)) = '' then ''::tsvector
            else setweight(to_tsvector('simple', normalize(title, nfkc)), 'A') end
    || setweight(to_tsvector('simple', search_words(normalize(description, nfkc))), 'B')
    || setweight(to_tsvector('simple', search_characters(normalize(description, nfkc))), 'B')
    || case when search_characters(normalize(description, nfkc)) = '' then ''::tsvector
            else setweight(to_tsvector('simple', normalize(description, nfkc)), 'B') end;

-- migrate:down
create or replace function task_search_document(title text, description text) returns tsvector
language sql immutable parallel safe
return setweight(to_tsvector('simple', normalize(title, nfkc)), 'A')
    || setweight(to_tsvector('simple', normalize(description, nfkc)), 'B');
drop function search_characters(text);
drop function search_words(text);
