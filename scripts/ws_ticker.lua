-- GET /ws/ticker: authenticates (token_auth set the actor), spawns a handler process for the
-- connection, and hands the socket to it through the websocket relay.
local http = require("http")
local json = require("json")
local security = require("security")
local logger = require("logger")

local function handler()
    local req = http.request()
    local res = http.response()

    if req:method() ~= http.METHOD.GET then
        res:set_status(http.STATUS.METHOD_NOT_ALLOWED)
        res:write_json({error = "method not allowed"})
        return
    end

    local actor = security.actor()
    if not actor then
        res:set_status(http.STATUS.UNAUTHORIZED)
        res:write_json({error = "authentication required"})
        return
    end

    local user_id = actor:id()
    local pid, err = process.spawn("app:ws_handler", "app:processes", user_id, actor:meta().user_id)
    if err then
        logger:error("spawn failed", {error = tostring(err), user_id = user_id})
        res:set_status(http.STATUS.INTERNAL_ERROR)
        res:write_json({error = "failed to create handler"})
        return
    end

    res:set_header("X-WS-Relay", json.encode({
        target_pid = tostring(pid),
        metadata = {user_id = user_id, auth_time = os.time()},
    }))
end

return { handler = handler }
