-- (d) POST /api/page-views/batch: BATCH_SIZE views per request, each with its own event id.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

function init(args)
  json_headers()
end

function request()
  local views = {}
  for i = 1, BATCH_SIZE do
    views[i] = view_json()
  end
  return wrk.format("POST", "/api/page-views/batch", nil, '{"views":[' .. table.concat(views, ",") .. "]}")
end
