-- DELETE /api/alerts/{id}: removes one of the caller's alerts through the alerts process.
local http = require("http")
local api = require("api")

local function handler()
    local req = http.request()
    local res = http.response()
    local me = api.authorized(res, "api.trade", "alerts")
    if not me then
        return
    end
    local id = tonumber(req:param("id"))
    if not id or id ~= math.floor(id) or id <= 0 then
        return api.reply(res, http.STATUS.BAD_REQUEST, {error = "alert id must be a positive integer"})
    end
    local answer, ref_id, err = api.call_alerts("delete", {user_id = me.user_id, id = math.tointeger(id)})
    if not answer then
        return api.reply_call_failure(res, ref_id, err)
    end
    if answer.error then
        return api.reply(res, http.STATUS.INTERNAL_ERROR, {error = answer.error, ref_id = ref_id})
    end
    if not answer.deleted then
        return api.reply(res, http.STATUS.NOT_FOUND, {error = "no such alert", ref_id = ref_id})
    end
    api.reply(res, http.STATUS.OK, {deleted = math.tointeger(id)})
end

return { handler = handler }
