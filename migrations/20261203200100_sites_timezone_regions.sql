-- migrate:up
-- Sites stored with the time zone CET, EET, MET or WET (accepted before 3540321 refused these names)
-- get the region whose rules the name means: PostgreSQL reads each name first as a fixed-offset
-- abbreviation (pg_timezone_abbrevs), so their reports ignored summer time (days an hour off from
-- March to October, hours labelled +01:00 in July). Since tzdata 2024b the four names are links to
-- these regions (CET and MET to Europe/Brussels, EET to Europe/Athens, WET to Europe/Lisbon); their
-- offsets agree with the older tzdata's own CET/EET/MET/WET zones (EU rules) at every hour of
-- 2026-2035 in PostgreSQL's and Python's tz data. sites.timezone is the only stored zone.
-- Row locks only (the matching sites; a report reads the zone at each request, and its cached answers
-- are keyed by the zone's name). The previous release reads the regions as any other zone.
set local lock_timeout = '3s';

update sites
set timezone = case timezone
    when 'CET' then 'Europe/Brussels'
    when 'EET' then 'Europe/Athens'
    when 'MET' then 'Europe/Brussels'
    when 'WET' then 'Europe/Lisbon'
end
where timezone in ('CET', 'EET', 'MET', 'WET');

-- migrate:down
-- Nothing to undo: the regions are what the names meant (PostgreSQL read them as fixed offsets).
