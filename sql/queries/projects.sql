-- name: LockUserProjects :exec
-- Serialises what adds to one user's projects: their creations (PROJECTS_PER_USER_MAX) and every
-- membership they gain (MEMBERSHIPS_PER_USER_MAX: a creation, an accepted invitation), so a burst
-- cannot pass either cap. Taken before any project's lock (LockProjectMembership): no cycle. Counting
-- must be a statement of its own, after this one: a statement's snapshot is taken before its lock is
-- granted. The key keeps the name it had when only creations took it: a release still serving during
-- a rolling deploy serialises its creations on the same key.
select pg_advisory_xact_lock(hashtextextended(concat('projects-creator:', @user_id::bigint), 0));

-- name: CountCreatedProjects :one
-- The projects the user created that still exist (owner_id names the creator); one being deleted
-- (deleting_since set, its purge under way) is gone already.
select count(*)::bigint from projects where owner_id = @owner_id and deleting_since is null;

-- name: CountProjectMembers :one
-- The project's members (PROJECT_MEMBERS_MAX), read under LockProjectMembership, which every change
-- that adds a member takes first: none is added while it decides. At most the cap's worth of the
-- primary key's entries.
select count(*)::bigint from project_members where project_id = @project_id;

-- name: CountMemberships :one
-- The projects the user is a member of, in any role (MEMBERSHIPS_PER_USER_MAX), read under
-- LockUserProjects: no membership of theirs is added meanwhile, and one being removed counts until its
-- removal commits (a refusal too many then, never a membership too many). A project being deleted has
-- none (its deletion removes them). An index-only scan of project_members_user_idx (user_id,
-- project_id): the user's own entries, never the table's.
select count(*)::bigint from project_members where user_id = @user_id;

-- name: CreateProject :one
insert into projects (name, description, owner_id)
values (@name, @description, @owner_id)
returning *;

-- name: GetProject :one
-- A project being deleted is no project (so in every query here that reads one by id).
select * from projects where id = @id and deleting_since is null;

-- name: LockProjectForChange :one
-- Before a change of the project's own fields: the row as it is, kept from other changes (and from
-- deletion) until the transaction ends, so a version compared with it is the one the change replaces.
-- NO KEY UPDATE, the lock the change takes anyway: rows referring to the project may still be inserted.
select * from projects where id = @id and deleting_since is null for no key update;

-- name: LockProjectForDeletion :one
-- Before a deletion: the row as it is, locked as the deletion locks it (the project first, then its
-- members and everything in it), so a version compared with it is the one deleted. One being deleted
-- already is no row (a 404).
select * from projects where id = @id and deleting_since is null for update;

-- name: UpdateProject :one
-- The given fields set (null: kept), only when that changes the project: no row when it changes
-- nothing (updated_at and version stay). The version is the trigger's (projects_next_version).
update projects
set name = coalesce(sqlc.narg(name), name),
    description = coalesce(sqlc.narg(description), description),
    archived = coalesce(sqlc.narg(archived)::boolean, archived),
    updated_at = now()
where id = @id
  and (name, description, archived) is distinct from
      (coalesce(sqlc.narg(name), name), coalesce(sqlc.narg(description), description),
       coalesce(sqlc.narg(archived)::boolean, archived))
returning *;

-- name: MarkProjectDeleting :execrows
-- The first step of a deletion, under LockProjectForDeletion: the project is being deleted from the
-- commit on (every query here reads it as gone); its purge deletes what is in it, then DeleteProject.
update projects set deleting_since = now() where id = @id and deleting_since is null;

-- name: RemoveAllMembers :execrows
-- A deleted project's memberships, in the deletion's transaction: every access through membership
-- (tasks, comments, files, the feed, lists) is a 404 from its commit on. Its tasks keep their
-- assignees (project_assignees: the deletion touches no task) until its purge deletes them.
delete from project_members where project_id = @project_id;

-- name: RemoveAllInvitations :execrows
delete from project_invitations where project_id = @project_id;

-- name: LockProjectPurge :one
-- One purge of a project at a time (a chunk's transaction holds it until it commits): a purge that
-- finds it taken stops, the one holding it goes on. False: taken.
select pg_try_advisory_xact_lock(hashtextextended(concat('projects-purge:', @project_id::bigint), 0));

-- name: ProjectPurgeDue :one
-- A project being deleted (a live project, or one purged already, is no row: nothing to purge).
select deleting_since from projects where id = @id and deleting_since is not null;

-- name: PurgeProjectGroupIds :many
-- A chunk of a deleted project's feed groups (only while it is being deleted), emptied by the
-- statements below, each bounded by @row_limit rows (a group's events, reads and objects are not bounded
-- by any cap), and deleted once empty. Locked in id order, as the feed's writer and readers lock groups
-- (LockActivityGroups): a reader's mark that found an event visible before the deletion either refers
-- to it before this chunk deletes it, or waits for the chunk and reads again (mark_events_read).
select g.id from activity_groups g
where g.project_id = @project_id
  and exists (select 1 from projects p where p.id = g.project_id and p.deleting_since is not null)
order by g.id
limit @chunk_size::integer
for no key update of g;

-- name: PurgeGroupEventReads :execrows
delete from activity_event_reads doomed
where doomed.ctid = any(array(
    select r.ctid from activity_event_reads r
    where r.group_id = any(@group_ids::bigint[])
    limit @row_limit::integer
    for update
));

-- name: PurgeGroupEvents :execrows
-- The events deleted (how many: the DELETE's rows), and the feed's objects they name that the project
-- owned (its tasks and files, as object or target) made tombstones, as a `*.deleted` event makes one
-- (UpsertActivityObjects in activity.sql): the title erased, the row kept (ids are never reused). The
-- project's deletion emits no event per task or file, and the deletion events of those deleted just
-- before it may have been dropped (an event of a project being deleted is not stored): every title
-- the project's objects have came with one of its events, so none outlives the purge.
with doomed as (
    select e.id, e.object_type, e.object_id, e.target_type, e.target_id from activity_events e
    where e.group_id = any(@group_ids::bigint[])
    limit @row_limit::integer
), named as (
    select d.object_type, d.object_id from doomed d where d.object_type in ('task', 'file')
    union
    select d.target_type, d.target_id from doomed d where d.target_type in ('task', 'file')
), tombstoned as (
    update activity_objects o set title = null, deleted = true
    from named n
    where o.object_type = n.object_type and o.object_id = n.object_id and not o.deleted
)
delete from activity_events
where id = any(array(select d.id from doomed d));

-- name: PurgeGroupObjects :execrows
delete from activity_group_objects doomed
where doomed.ctid = any(array(
    select o.ctid from activity_group_objects o
    where o.group_id = any(@group_ids::bigint[])
    limit @row_limit::integer
    for update
));

-- name: PurgeGroups :execrows
-- Emptied groups of a deleted project; what still cascades from them (their actors, their readers'
-- marks, rows a late writer added) is small.
delete from activity_groups where id = any(@group_ids::bigint[]) and project_id = @project_id;

-- name: PurgeProjectTaskIds :many
-- One chunk of a deleted project's tasks (only while it is being deleted), removed by the three
-- statements below in one transaction.
select t.id from tasks t
where t.project_id = @project_id
  and exists (select 1 from projects p where p.id = t.project_id and p.deleting_since is not null)
order by t.id
limit @chunk_size::integer;

-- name: PurgeTaskComments :execrows
-- The comments of a chunk of a deleted project's tasks, by task id (comments_task_idx), before
-- their tasks: the tasks' deletion then cascades to none.
delete from comments where task_id = any(@task_ids::bigint[]);

-- name: PurgeTaskSearchDocuments :execrows
delete from task_search_documents where task_id = any(@task_ids::bigint[]);

-- name: PurgeTasks :execrows
delete from tasks where id = any(@task_ids::bigint[]) and project_id = @project_id;

-- name: TombstoneTaskObjects :execrows
-- The feed's objects of a chunk of a deleted project's purged tasks made tombstones, as a task.deleted
-- event makes one (UpsertActivityObjects in activity.sql): the title erased, the row kept (ids are
-- never reused; no later event of the project is stored). The deletion emits no task.deleted per task.
update activity_objects set title = null, deleted = true
where object_type = 'task' and object_id = any(@task_ids::bigint[]) and not deleted;

-- name: PurgeProjectFileIds :many
-- One chunk of a deleted project's files (only while it is being deleted), after @after_id in id order
-- (project_files_project_idx): their rows go with the project's (DeleteProject), their objects first.
select f.id from project_files f
where f.project_id = @project_id and f.id > @after_id
  and exists (select 1 from projects p where p.id = f.project_id and p.deleting_since is not null)
order by f.id
limit @chunk_size::integer;

-- name: TombstoneFileObjects :execrows
-- The feed's objects of a chunk of a deleted project's files made tombstones, as TombstoneTaskObjects.
update activity_objects set title = null, deleted = true
where object_type = 'file' and object_id = any(@file_ids::bigint[]) and not deleted;

-- name: DeleteProject :execrows
-- The last step of a deleted project's purge: the row, and what still cascades from it (its files'
-- rows, anything a late writer added meanwhile: few rows by now). Only a project being deleted.
delete from projects where id = @id and deleting_since is not null;

-- name: ListProjectsToPurge :many
-- The projects marked for deletion before @older_than_s seconds ago that still exist: their purge job
-- was lost (Valkey lost the queue, retries ran out), the hourly cron enqueues it again.
select id from projects
where deleting_since is not null and deleting_since < now() - make_interval(secs => @older_than_s::float8)
order by id
limit @row_limit;

-- name: ListMemberProjects :many
-- The caller's projects, keyset by id: the page is read from the caller's range of
-- project_members_user_idx (user_id, project_id), in its order, then each project by its key (a
-- lateral subquery kept apart by `offset 0`, so no plan can make it a merge join along projects_pkey).
-- Keyed and ordered by p.id, the join walked every project in id order and probed the caller's
-- memberships for each: 30,000 projects read for a member of 30 (review).
select p.*, m.role as my_role
from project_members m
cross join lateral (select * from projects where projects.id = m.project_id offset 0) p
where m.user_id = @user_id
  and m.project_id > @after_id
  and (sqlc.narg(archived)::boolean is null or p.archived = sqlc.narg(archived)::boolean)
order by m.project_id
limit @row_limit;

-- name: MemberProjectIds :many
-- Every project the user is a member of (any role): what the task lists' cache checks readers against.
select project_id from project_members where user_id = @user_id order by project_id;

-- name: GetMemberRole :one
select role from project_members where project_id = @project_id and user_id = @user_id;

-- name: GetMemberRoleKeepingProject :one
-- The caller's role, and the project row locked against deletion until the transaction ends: taken
-- before inserting rows that refer to the project. FOR KEY SHARE is the lock those rows' foreign-key
-- checks take anyway; taken first, a deletion that commits meanwhile leaves no row here (a 404)
-- instead of failing the insert's check. Only a deletion conflicts with it (membership changes lock
-- the project FOR NO KEY UPDATE), so a statement that waited finds the row gone and never uses its
-- older view of the membership. A deletion now marks the project (and deletes its memberships) rather
-- than deleting its row: a statement that waited sees the mark on the row it locked (the lock re-reads
-- it), so it is no row here either, never a role read from the older membership.
select m.role
from projects p
join project_members m on m.project_id = p.id and m.user_id = @user_id
where p.id = @project_id and p.deleting_since is null
for key share of p;

-- name: KeepMember :one
-- A membership locked against removal until the transaction ends (FOR KEY SHARE, as a task
-- assignee's foreign-key check): no row for a non-member, or one removed while this waited.
select user_id from project_members
where project_id = @project_id and user_id = @user_id
for key share;

-- name: AddMember :one
insert into project_members (project_id, user_id, role)
values (@project_id, @user_id, @role)
on conflict (project_id, user_id) do nothing
returning *;

-- name: UpdateMemberRole :one
update project_members set role = @role
where project_id = @project_id and user_id = @user_id
returning *;

-- name: RemoveMember :execrows
delete from project_members where project_id = @project_id and user_id = @user_id;

-- name: WithdrawInvitationsOf :execrows
-- The user's waiting invitations to the project (addressed to their account's email).
delete from project_invitations i
using users u
where i.project_id = @project_id and u.id = @user_id and i.email = u.email;

-- name: WithdrawInvitationsSentBy :execrows
-- The invitations the user sent to the project, withdrawn when they stop being one of its owners (an
-- invitation carries its sender's authority: accepted later, it would let them back in alone).
delete from project_invitations where project_id = @project_id and invited_by = @user_id::bigint;

-- name: CountOtherActiveOwners :one
-- The project's owners besides @user_id who can act: an owner whose account is deactivated cannot
-- (no sign-in, no session), so "the last owner stays" counts only active accounts (and removing or
-- demoting a deactivated owner takes no owner who can act away). Read under LockProjectMembership.
select count(*) from project_members m
join users u on u.id = m.user_id and u.is_active
where m.project_id = @project_id and m.role = 'owner' and m.user_id <> @user_id;

-- name: ListMembers :many
select m.project_id, m.user_id, m.role, m.added_at, u.display_name, u.email
from project_members m
join users u on u.id = m.user_id
where m.project_id = @project_id and m.user_id > @after_user_id
order by m.user_id
limit @row_limit;

-- name: LockProjectMembership :one
-- Serialises changes of a project's members and invitations: each reads the roles and counts it
-- decides on (the last owner stays) only once it holds this lock. NO KEY UPDATE: foreign-key
-- checks (tasks, files being inserted meanwhile) do not wait for it. No row: no such project (or one
-- being deleted).
select id from projects where id = @id and deleting_since is null for no key update;

-- name: CountOtherInvitations :one
-- The project's waiting invitations to other emails (inviting an email again replaces its own); an
-- expired one (sent @ttl_s or longer ago) no longer waits.
select count(*)::bigint from project_invitations
where project_id = @project_id and email <> @email
  and created_at > now() - make_interval(secs => @ttl_s::float8);

-- name: UpsertInvitation :one
-- One invitation per (project, email): inviting again updates the role and replaces the token's hash
-- (the token handed out before no longer accepts it), and restarts its time (created_at) as well.
insert into project_invitations (project_id, email, role, invited_by, token_sha256)
values (@project_id, @email, @role, @invited_by, @token_sha256)
on conflict (project_id, email) do update
set role = excluded.role, invited_by = excluded.invited_by, created_at = now(),
    token_sha256 = excluded.token_sha256
returning *;

-- name: ListProjectInvitations :many
-- The project's waiting invitations: not those expired (sent @ttl_s or longer ago). expires_at: the
-- first instant at which the rule every query here applies (created_at > now() - @ttl_s) no longer holds.
select *, (created_at + make_interval(secs => @ttl_s::float8))::timestamptz as expires_at
from project_invitations
where project_id = @project_id and id > @after_id
  and created_at > now() - make_interval(secs => @ttl_s::float8)
order by id
limit @row_limit;

-- name: DeleteProjectInvitation :one
-- A waiting invitation withdrawn: an expired one is as if withdrawn already (no row; it is purged).
delete from project_invitations
where id = @id and project_id = @project_id
  and created_at > now() - make_interval(secs => @ttl_s::float8)
returning *;

-- name: ListInvitationsForEmail :many
-- The invitations addressed to one email, with the project's name: only those whose sender is still an
-- active owner of the project and that have not expired (the others cannot be accepted). expires_at: when
-- it stops being accepted (as in ListProjectInvitations).
select i.id, i.project_id, p.name as project_name, i.role, i.created_at,
       (i.created_at + make_interval(secs => @ttl_s::float8))::timestamptz as expires_at
from project_invitations i
join projects p on p.id = i.project_id
join project_members sender on sender.project_id = i.project_id and sender.user_id = i.invited_by
join users sender_account on sender_account.id = sender.user_id
where i.email = @email and i.id > @after_id
  and i.created_at > now() - make_interval(secs => @ttl_s::float8)
  and sender.role = 'owner' and sender_account.is_active
order by i.id
limit @row_limit;

-- name: InvitationToAccept :one
-- The project an invitation to this email is for and its token's hash (null: issued before tokens,
-- never accepted), to compare in constant time; unlocked: the project is locked before the taking.
-- Whether its sender may still invite is TakeAcceptedInvitation's to decide, under the lock. An expired
-- invitation (sent @ttl_s or longer ago) is no row.
select project_id, token_sha256 from project_invitations
where id = @id and email = @email and created_at > now() - make_interval(secs => @ttl_s::float8);

-- name: TakeAcceptedInvitation :one
-- An invitation addressed to this email, removed as accepted: only while it still has the hash the
-- token was checked against (inviting the email again meanwhile replaced it: no row), and while its
-- sender is still an active owner of the project (an invitation is worth its sender's authority; read
-- here, after the membership lock, so a demotion or removal committed meanwhile is seen); and while it
-- has not expired.
delete from project_invitations i
where i.id = @id and i.email = @email and i.token_sha256 = @token_sha256
  and i.created_at > now() - make_interval(secs => @ttl_s::float8)
  and exists (
      select 1
      from project_members sender
      join users sender_account on sender_account.id = sender.user_id
      where sender.project_id = i.project_id and sender.user_id = i.invited_by
        and sender.role = 'owner' and sender_account.is_active
  )
returning *;

-- name: TakeInvitation :one
-- An invitation addressed to this email, removed as declined: only while it still has the hash the
-- token was checked against (an address proves nothing, registration sends no mail: whoever registered
-- it could otherwise decline every invitation sent to it); an expired one is as if withdrawn already
-- (no row; it is purged).
delete from project_invitations
where id = @id and email = @email and token_sha256 = @token_sha256
  and created_at > now() - make_interval(secs => @ttl_s::float8)
returning *;

-- name: PurgeExpiredInvitations :execrows
-- One bounded chunk of the invitations sent @ttl_s or longer ago (the daily purge repeats it, one
-- transaction each, until fewer rows are deleted). No index on created_at: the table holds only waiting
-- invitations (accepted, declined and withdrawn ones are deleted; at most PROJECT_INVITATIONS_MAX live
-- per project) and a day's worth of expired ones, so a scan once a day costs less than an index every
-- invitation write would maintain. SKIP LOCKED: the purge waits for no one (a project's deletion, an
-- acceptance, a withdrawal, an invitation sent again, each holding rows of the same table), so it takes
-- part in no deadlock; what it skips is purged the next day. The lock re-reads the row: one sent again
-- meanwhile (created_at now) is no longer expired and is kept.
delete from project_invitations doomed
where doomed.ctid = any(array(
    select c.ctid
    from project_invitations c
    where c.created_at <= now() - make_interval(secs => @ttl_s::float8)
    limit @chunk_size::integer
    for update skip locked
));

-- name: ExistingProjects :many
-- A project being deleted is gone (the files' sweep removes what it left on disk).
select id from projects where id = any(@ids::bigint[]) and deleting_since is null order by id;

-- name: MembershipsOfUser :many
-- The live projects a user is a member of, in id order (the order their locks are taken in), for the
-- account's erasure (each role is read again under its project's lock). A project being deleted is
-- left to its purge.
select m.project_id
from project_members m
join projects p on p.id = m.project_id
where m.user_id = @user_id and p.deleting_since is null
order by m.project_id;

-- name: ProjectsInvitingUser :many
-- The live projects holding an invitation to the user's address, in id order, for the account's
-- erasure (the address is freed: an invitation to it must not pass to its next holder).
select distinct i.project_id
from project_invitations i
join users u on u.id = @user_id and i.email = u.email
join projects p on p.id = i.project_id and p.deleting_since is null
order by i.project_id;

-- name: SuccessorOnErasure :one
-- Who becomes the project's owner when an administrator erases its last active owner: an active
-- member, editors first, then the longest a member. No row: nobody active is left (the project goes).
select m.user_id, m.role
from project_members m
join users u on u.id = m.user_id and u.is_active
where m.project_id = @project_id and m.user_id <> @user_id
order by (m.role = 'editor') desc, m.added_at, m.user_id
limit 1;
