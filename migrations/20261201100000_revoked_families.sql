-- migrate:up
-- Session families whose access tokens are refused. PostgreSQL is the source of truth; every API
-- process mirrors the recent rows in memory, kept current by the NOTIFY the trigger sends in the
-- revoking transaction (delivered when, and only if, it commits). Rows older than the longest
-- access-token lifetime are useless and purged.
create table revoked_families (
    family_id uuid primary key,
    revoked_at timestamptz not null default now()
);

create index revoked_families_revoked_at_idx on revoked_families (revoked_at);

create function notify_revoked_family() returns trigger
language plpgsql as $$
begin
    perform pg_notify('revoked_families', new.family_id::text);
    return null;
end;
$$;

create trigger revoked_families_notify
after insert or update on revoked_families
for each row execute function notify_revoked_family();

-- Families revoked before this table existed (their access tokens may still be unexpired).
insert into revoked_families (family_id, revoked_at)
select family_id, max(revoked_at)
from refresh_tokens
where revoked_at > now() - interval '1 day'
group by family_id;

-- migrate:down
drop table revoked_families;
drop function notify_revoked_family();
