-- migrate:up
-- The users a merged tree affected, kept on its root: the list of groups counted them for every
-- merged tree of its page at every request (count(distinct) over every member's users: two members of
-- 150,000 users each, 60 to 230 ms a page). A tree of one group reads its own `users`. Kept by the
-- writes (a user no other member has seen), and counted again by a merge, an unmerge, the users'
-- retention and every hourly purge; meaningful on a merged tree's root only. Filled by the next
-- migration, one tree per transaction (here it would hold this alter's lock).
set local lock_timeout = '5s';
alter table monitoring_groups add column tree_users bigint not null default 0;

-- migrate:down
set local lock_timeout = '5s';
alter table monitoring_groups drop column tree_users;
