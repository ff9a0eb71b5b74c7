-- GET /api/ticker: public. The latest snapshot from the cache the ticker process refreshes on
-- every tick, so a request never waits on the ticker itself.
local http = require("http")
local store = require("store")

local function handler()
    local res = http.response()
    local cache, err = store.get("app:cache")
    local snapshot = cache and cache:get("ticker:snapshot")
    if err or not snapshot then
        res:set_status(http.STATUS.SERVICE_UNAVAILABLE)
        res:write_json({error = "no prices yet"})
        return
    end
    res:set_content_type("application/json")
    res:set_header("Cache-Control", "public, max-age=1")
    res:write(snapshot)
end

return { handler = handler }
