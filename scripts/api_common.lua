-- Shared by the /api/* handlers: JSON replies, the caller, permission checks through the
-- security model, and the request→process→reply call to the alerts process.
local http = require("http")
local security = require("security")
local crypto = require("crypto")
local time = require("time")

local REPLY_TIMEOUT = "500ms"

local M = {}

function M.reply(res, status, body)
    res:set_status(status)
    res:write_json(body)
end

-- The authenticated caller's actor meta (plus `actor`, its id) when the caller's scope allows
-- `action` on `resource`; otherwise nil after answering 401 (no caller) or 403.
function M.authorized(res, action, resource)
    local actor = security.actor()
    if not actor then
        M.reply(res, http.STATUS.UNAUTHORIZED, {error = "authentication required"})
        return nil
    end
    if not security.can(action, resource) then
        M.reply(res, http.STATUS.FORBIDDEN, {error = "permission denied", action = action})
        return nil
    end
    local meta = actor:meta()
    meta.actor = actor:id()
    return meta
end

-- Sends `topic` to the alerts process with a fresh ref_id and waits for the matching reply.
-- Returns reply, ref_id; or nil, ref_id, err ("timeout" when nothing came back in time).
function M.call_alerts(topic, payload)
    local ref_id = crypto.random.uuid()
    payload.ref_id = ref_id
    payload.reply_to = process.pid()
    local sent, send_err = process.send("alerts", topic, payload)
    if not sent then
        return nil, ref_id, "alerts service unavailable: " .. tostring(send_err)
    end
    local inbox = process.inbox()
    local deadline = time.after(REPLY_TIMEOUT)
    while true do
        local r = channel.select {inbox:case_receive(), deadline:case_receive()}
        if r.channel == deadline then
            return nil, ref_id, "timeout"
        end
        local data = r.value:payload():data()
        -- A late reply to an earlier call of this pid cannot be confused with ours.
        if type(data) == "table" and data.ref_id == ref_id then
            return data, ref_id
        end
    end
end

-- Maps a failed call_alerts to 504 (timeout) or 503.
function M.reply_call_failure(res, ref_id, err)
    if err == "timeout" then
        return M.reply(res, http.STATUS.GATEWAY_TIMEOUT, {error = "alerts service timeout", ref_id = ref_id})
    end
    M.reply(res, http.STATUS.SERVICE_UNAVAILABLE, {error = err, ref_id = ref_id})
end

return M
