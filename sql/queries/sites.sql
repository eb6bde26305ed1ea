-- name: CreateSite :one
insert into sites (owner_id, domain, ingest_key, timezone)
values (@owner_id, @domain, @ingest_key, @timezone)
returning *;

-- name: LockSiteOwner :exec
-- Serialises one owner's site creations (so a burst cannot pass the cap). Counting must be a statement
-- of its own, after this one: a statement's snapshot is taken before its lock is granted.
select pg_advisory_xact_lock(hashtextextended(concat('sites-owner:', @owner_id::bigint), 0));

-- name: DatabaseKnowsTimeZone :one
-- Whether PostgreSQL's own tz database (which every report's `at time zone` reads) has the zone: the
-- API's list of zones is Python's, whose tz data may be newer.
select exists (select 1 from pg_catalog.pg_timezone_names where name = @name::text) as known;

-- name: CountOwnedSites :one
select count(*)::bigint from sites where owner_id = @owner_id;

-- name: GetSite :one
select * from sites where id = @id;

-- name: ListOwnSites :many
-- One owner's sites by id (sites_owner_idx: that owner's range only). A query of its own, not an
-- optional owner in ListAllSites: a prepared statement's generic plan, serving both, walked every
-- site in id order with the owner as a filter.
select * from sites
where owner_id = @owner_id
  and id > @after_id
order by id
limit @row_limit;

-- name: ListAllSites :many
-- Every site by id (administrators).
select * from sites
where id > @after_id
order by id
limit @row_limit;

-- name: LockSite :one
-- The site, held until the commit as its key's rotation (an update of a unique column) or its
-- deletion holds it: the owner checked is the owner when the key is replaced.
select * from sites where id = @id for update;

-- name: ReplaceIngestKey :one
-- A trigger on `sites` records the old key (`retired_ingest_keys`) and NOTIFYs it (`deleted_sites`).
update sites set ingest_key = @ingest_key where id = @id
returning *;

-- name: RotationWait :one
-- Seconds until the site may rotate its key again: 0 while it rotated fewer than @per_hour times in
-- the last hour, else until the oldest of those rotations is an hour old.
select coalesce(
    (select extract(epoch from min(retired_at) + interval '1 hour' - now())::float8
     from (select retired_at from retired_ingest_keys
           where site_id = @site_id and retired_at > now() - interval '1 hour'
           order by retired_at desc limit @per_hour) recent
     having count(*) >= @per_hour),
    0)::float8 as wait_s;

-- name: ForgetRetiredKeys :exec
-- Retired keys older than any process remembers a refusal (`kept_s`): they are in no process's cache
-- any more, and the lookup of an unknown key finds no site for them.
delete from retired_ingest_keys where retired_at < now() - make_interval(secs => @kept_s::float8);

-- name: DeleteSite :execrows
delete from sites where id = @id;

-- name: SiteIdsForKeys :many
-- The sites of many ingest keys at once: the ingest path looks up every unknown key that arrived
-- while its previous lookup ran in one statement, so unknown keys never cost a query each.
select id, ingest_key from sites where ingest_key = any(@ingest_keys::text[]);

-- name: RecentlyDeletedKeys :many
-- What a process loads when it starts listening (again): the keys of the sites deleted, and the keys
-- retired by a rotation, within the last `within_s` seconds (longer than any process keeps a site's
-- key cached).
select ingest_key from deleted_sites
where deleted_at > now() - make_interval(secs => @within_s::float8)
union all
select ingest_key from retired_ingest_keys
where retired_at > now() - make_interval(secs => @within_s::float8);

-- name: ListenForDeletedSites :exec
-- A site's deletion NOTIFYs `deleted_sites` with its key (trigger on `sites`) in the deleting
-- transaction; a key's rotation NOTIFYs the old key there too (another trigger).
listen deleted_sites;
