-- (b) POST /bench/noop: decodes the same body as the ingest route, stores nothing.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

function init(args)
  json_headers()
end

function request()
  return wrk.format("POST", "/bench/noop", nil, view_json())
end
