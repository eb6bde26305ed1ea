-- migrate:up
-- The users a merged tree affected, kept on its root: the list of groups counted them for every
-- merged tree of its page at every request (count(distinct) over every member's users: two members of
-- 150,000 users each, 60 to 230 ms a page). A tree of one group reads its own `users`. Kept by the
-- writes (a user no other member has seen), and recounted by a merge, an unmerge and the users'
-- retention; meaningful on a merged tree's root only.
set local lock_timeout = '5s';
alter table monitoring_groups add column tree_users bigint not null default 0;

update monitoring_groups r
set tree_users = (
    select count(distinct u.user_id)
    from monitoring_group_users u
    join monitoring_groups m on m.id = u.group_id
    where m.root_id = r.id
)
where r.parent_id is null
  and exists (select 1 from monitoring_groups m where m.root_id = r.id and m.id <> r.id);

-- migrate:down
set local lock_timeout = '5s';
alter table monitoring_groups drop column tree_users;
