-- GET /api/me: who the caller is, as the api_auth middleware established it.
local http = require("http")
local api = require("api")

local function handler()
    local res = http.response()
    local me = api.authorized(res, "api.read", "me")
    if not me then
        return
    end
    api.reply(res, http.STATUS.OK, {
        user_id = me.user_id,
        actor = me.actor,
        role = me.role,
        permissions = me.permissions or {},
        auth = me.auth,
        key = me.key,
    })
end

return { handler = handler }
