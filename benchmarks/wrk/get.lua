-- GET URL_PATH (the bare reference's /hello, the authenticated task list, the feed). With
-- BEARER_TOKEN set, every request carries `Authorization: Bearer <token>`.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

wrk.method = "GET"
wrk.path = os.getenv("URL_PATH") or "/"
wrk.headers["User-Agent"] = USER_AGENT
local token = os.getenv("BEARER_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
