-- migrate:up
-- A project's deletion in two steps: the request marks it (deleting_since, null while the project
-- lives), deletes its memberships and invitations, and commits at once; the purge job
-- (ProjectService.purge_deleted_project) then deletes what was in it in bounded chunks, one short
-- transaction each, and the project's row last. One `delete from projects` cascading to everything of
-- a project at the caps (10,000 tasks of 1,000 comments, and their feed) ran far past the statement
-- timeout: such a project could not be deleted at all.
--
-- The previous release (a rolling deploy) ignores the column: it still deletes a project in one
-- statement, and sees a project being deleted as a project without members (404 to everyone).
-- Locks: adding a nullable column without a default is a catalogue change, an instant under ACCESS
-- EXCLUSIVE. Its index is built concurrently by the next migration.
set local lock_timeout = '3s';

alter table projects add column deleting_since timestamptz;

-- migrate:down
set local lock_timeout = '3s';
alter table projects drop column deleting_since;
