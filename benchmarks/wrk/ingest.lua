-- (c) POST /api/page-views: one view per request through the group-commit sink.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

function init(args)
  json_headers()
end

function request()
  return wrk.format("POST", "/api/page-views", nil, view_json())
end
