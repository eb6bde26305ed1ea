-- POST one page view (the ingest body) to URL_PATH: the bare reference's decode-only routes and
-- the seed design's ingest route.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

local path = os.getenv("URL_PATH") or "/api/page-views"

function init(args)
  json_headers()
end

function request()
  return wrk.format("POST", path, nil, view_json())
end
