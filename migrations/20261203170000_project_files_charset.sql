-- migrate:up
-- A text file's character encoding (`charset`), recorded at upload: the one its part declared (a
-- character set browsers decode, by its WHATWG name), or `utf-8` when the whole body is valid UTF-8
-- (a declared UTF-8 is checked too); null when unknown or not text. Downloads label text with it,
-- and text without it with its bare media type (Litestar otherwise appended `charset=utf-8` to every
-- text type, whatever the bytes: a Windows-1252 CSV was shown as mojibake).
--
-- Files stored before this migration keep null (no backfill: it would read every stored file).
-- The previous release (a rolling deploy) ignores the column: sqlc expanded its `select *` into the
-- columns it knew, and its insert names its columns (a file it stores gets null, labelled bare).
-- Locks: adding a nullable column without a default is a catalogue change, an instant under ACCESS
-- EXCLUSIVE.
set local lock_timeout = '3s';

alter table project_files add column charset text;

-- migrate:down
set local lock_timeout = '3s';
alter table project_files drop column charset;
