-- migrate:up transaction:false
-- A key's rotation asks how often the site rotated within the hour (RotationWait: the site's newest
-- retired keys): without an index it read every retired key of every site on each rotation. This one
-- reads the site's range, newest first. Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists retired_ingest_keys_site_idx
    on retired_ingest_keys (site_id, retired_at);

-- migrate:down transaction:false
drop index concurrently if exists retired_ingest_keys_site_idx;
