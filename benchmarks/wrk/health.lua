-- (a) GET /health/live: the HTTP ceiling of the stack.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

wrk.method = "GET"
wrk.path = "/health/live"
wrk.headers["User-Agent"] = USER_AGENT
