-- migrate:up transaction:false
-- Each rotation forgets the retired keys older than any process remembers (ForgetRetiredKeys), and a
-- process that (re)connects its listener loads the recent ones (RecentlyDeletedKeys): without an index
-- both read every retired key (an hour's worth of every site's rotations, and the rows a forgetting
-- left dead). Concurrently, one index per file (see 20261202010500).
create index concurrently if not exists retired_ingest_keys_retired_at_idx
    on retired_ingest_keys (retired_at);

-- migrate:down transaction:false
drop index concurrently if exists retired_ingest_keys_retired_at_idx;
