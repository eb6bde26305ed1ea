-- migrate:up
-- The first instant of a local day, and report buckets that start at or before every instant in them.
--
-- `day::timestamp at time zone tz` and `date_trunc(unit, ts, tz)` read an ambiguous local time (clocks
-- going back: America/Havana at 01:00 -> 00:00 on 2026-11-01, Atlantic/Azores on 2027-10-31) as its
-- LATER instant. A local day that starts twice then started an hour late: the views of its first
-- local hour were counted in the day before, and a day bucket started after some of its own views
-- (a one-day period of 2026-10-31 in Havana showed a bucket labelled 2026-11-01). Same signatures: the
-- previous release keeps working (its own day buckets stay date_trunc's).

-- The UTC offset of `tz` at `at` (local minus UTC; negative west of Greenwich).
create or replace function utc_offset(at timestamptz, tz text) returns interval
language sql immutable parallel safe as $$
    select (at at time zone tz) - (at at time zone 'UTC')
$$;

-- The earliest instant whose local date in `tz` is `day`. PostgreSQL's own reading of the local
-- midnight (`day::timestamp at time zone tz`) is the later instant of an ambiguous one, and the instant
-- the clocks skip to when midnight does not exist (the first instant of that day when the gap starts
-- at midnight, as every skipped midnight of the tz database does). An ambiguous midnight's earlier
-- instant is midnight read with the offset in effect before the clocks went back (a day earlier:
-- whatever the shift, one hour or thirty minutes), when that reading does show midnight locally.
-- Checked against Python's zoneinfo (the first instant of each local date, found minute by minute) for
-- every day of 2026-2030 in all 597 zones PostgreSQL knows: equal wherever the two tz databases agree
-- on the offsets (tests/functional/test_reports_zones.py keeps a sample: skipped and doubled midnights,
-- thirty-minute and two-hour shifts).
create or replace function local_day_start(day date, tz text) returns timestamptz
language sql immutable parallel safe as $$
    select least(day::timestamp at time zone tz, case when earlier at time zone tz = day::timestamp then earlier end)
    from (
        select (day::timestamp - utc_offset((day::timestamp at time zone tz) - interval '1 day', tz))
            at time zone 'UTC' as earlier
    ) midnight
$$;

-- The key of the report bucket (`unit` 'day' or 'hour' in `tz`) holding the instant `at`: an hour's
-- is its start, date_trunc's (below a day date_trunc keeps the offset of `at`: the two local hours of
-- the same name when the clocks go back stay apart); a day's is its local date, as the UTC midnight of
-- that date (one type for both units; cheap per row), whose start analytics_bucket_start computes once
-- per bucket (local_day_start costs some ten times a date_trunc).
create or replace function analytics_bucket_key(unit text, at timestamptz, tz text) returns timestamptz
language sql immutable parallel safe as $$
    select case unit
        when 'day' then (at at time zone tz)::date::timestamp at time zone 'UTC'
        else date_trunc(unit, at, tz)
    end
$$;

-- The first instant of the bucket whose key (analytics_bucket_key) is `bucket_key`.
create or replace function analytics_bucket_start(unit text, bucket_key timestamptz, tz text) returns timestamptz
language sql immutable parallel safe as $$
    select case unit
        when 'day' then local_day_start((bucket_key at time zone 'UTC')::date, tz)
        else bucket_key
    end
$$;

-- As 20261122000600, with analytics_bucket_key's buckets: the rollups of the UTC hour starting at `hour`
-- serve a report over [range_from, range_to) bucketed by `unit` ('' = the whole range) when the hour
-- lies inside the range and inside one bucket (a day: one local date throughout).
create or replace function analytics_hour_is_whole(
    hour timestamptz, range_from timestamptz, range_to timestamptz, unit text, tz text
) returns boolean
language sql stable as $$
    select hour >= range_from and hour + interval '1 hour' <= range_to
        and (unit = '' or analytics_bucket_key(unit, hour, tz)
                          = analytics_bucket_key(unit, hour + interval '3599.999999 seconds', tz))
$$;

-- migrate:down

create or replace function analytics_hour_is_whole(
    hour timestamptz, range_from timestamptz, range_to timestamptz, unit text, tz text
) returns boolean
language sql stable as $$
    select hour >= range_from and hour + interval '1 hour' <= range_to
        and (unit = '' or date_trunc(unit, hour, tz) = date_trunc(unit, hour + interval '3599.999999 seconds', tz))
$$;

drop function analytics_bucket_start(text, timestamptz, text);
drop function analytics_bucket_key(text, timestamptz, text);
drop function local_day_start(date, text);
drop function utc_offset(timestamptz, text);
