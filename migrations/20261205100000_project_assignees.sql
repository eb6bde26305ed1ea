-- migrate:up
-- Who a project's tasks may be assigned to: its members, mirrored here by the triggers below, except
-- when a project is deleted. tasks_assignee_is_member referenced project_members, so the deletion's
-- RemoveAllMembers (every membership, in its one short transaction, so that every access is a 404 from
-- its commit on) also unassigned every assigned task of the project through the foreign key's
-- `on delete set null`: 10,000 assigned tasks, 0.64 s and 10,000 rows updated and locked in the
-- request; near TASKS_PER_PROJECT_MAX's bound, past the statement timeout, and the project could not
-- be deleted. Now a deleted project's (deleting_since set first) assignees stay until its purge has
-- deleted its tasks and DeleteProject cascades. Removing a member (RemoveMember, a user deleted) still
-- unassigns their tasks in that project, in the same transaction.
set local lock_timeout = '3s';

create table project_assignees (
    project_id bigint not null references projects (id) on delete cascade,
    user_id bigint not null references users (id) on delete cascade,
    primary key (project_id, user_id)
);
-- users' cascade (an account deleted) finds its rows by it, as project_members_user_idx does there.
create index project_assignees_user_idx on project_assignees (user_id);

create function project_assignees_add() returns trigger
language plpgsql as $$
begin
    insert into project_assignees (project_id, user_id)
    select project_id, user_id from added
    on conflict do nothing;
    return null;
end
$$;

create function project_assignees_remove() returns trigger
language plpgsql as $$
begin
    delete from project_assignees a
    using removed r
    where a.project_id = r.project_id
      and a.user_id = r.user_id
      and not exists (select 1 from projects p where p.id = r.project_id and p.deleting_since is not null);
    return null;
end
$$;

-- The triggers first: they lock project_members until the commit, so no membership is added or
-- removed between the copy below and them.
create trigger project_members_assignees_added
after insert on project_members
referencing new table as added
for each statement execute function project_assignees_add();

create trigger project_members_assignees_removed
after delete on project_members
referencing old table as removed
for each statement execute function project_assignees_remove();

insert into project_assignees (project_id, user_id)
select project_id, user_id from project_members
on conflict do nothing;

alter table tasks
    drop constraint tasks_assignee_is_member,
    add constraint tasks_assignee_is_assignable
    foreign key (project_id, assignee_id) references project_assignees (project_id, user_id)
    on delete set null (assignee_id)
    not valid;

-- migrate:down
set local lock_timeout = '3s';
alter table tasks drop constraint tasks_assignee_is_assignable;
update tasks t set assignee_id = null
where assignee_id is not null
  and not exists (
      select 1 from project_members m where m.project_id = t.project_id and m.user_id = t.assignee_id
  );
alter table tasks
    add constraint tasks_assignee_is_member
    foreign key (project_id, assignee_id) references project_members (project_id, user_id)
    on delete set null (assignee_id);
drop trigger project_members_assignees_removed on project_members;
drop trigger project_members_assignees_added on project_members;
drop function project_assignees_remove();
drop function project_assignees_add();
drop table project_assignees;
