-- migrate:up
-- A task's assignee is a member of its project, enforced by the database: removing a member (or
-- deleting the user) clears their assignments in that project, without the projects domain having
-- to touch tasks. Assignments that already break the rule are cleared first.
update tasks t set assignee_id = null
where assignee_id is not null
  and not exists (
      select 1 from project_members m where m.project_id = t.project_id and m.user_id = t.assignee_id
  );

alter table tasks
    add constraint tasks_assignee_is_member
    foreign key (project_id, assignee_id) references project_members (project_id, user_id)
    on delete set null (assignee_id);

-- migrate:down
alter table tasks drop constraint tasks_assignee_is_member;
