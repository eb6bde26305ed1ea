-- migrate:up transaction:false
-- tree_users of the merged trees there are (20261206220000), one tree per transaction: a tree's root
-- is locked for the time its users are counted (as RecountTreeUsers does), and no longer. The only
-- statement of this section (a block that commits: see 20261206180000). Running it again counts again.
do $$
declare
    root bigint;
begin
    for root in
        select r.id from monitoring_groups r
        where r.parent_id is null
          and exists (select 1 from monitoring_groups m where m.root_id = r.id and m.id <> r.id)
        order by r.id
    loop
        update monitoring_groups r
        set tree_users = (
            select count(distinct u.user_id)
            from monitoring_group_users u
            join monitoring_groups m on m.id = u.group_id
            where m.root_id = r.id
        )
        where r.id = root;
        commit;
    end loop;
end
$$;

-- migrate:down
-- Nothing to undo: the column goes with 20261206220000's down.
select 1;
