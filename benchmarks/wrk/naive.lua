-- (e) POST /bench/naive: one INSERT (and commit) per request through the psycopg pool.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

function init(args)
  json_headers()
end

function request()
  return wrk.format("POST", "/bench/naive", nil, view_json())
end
