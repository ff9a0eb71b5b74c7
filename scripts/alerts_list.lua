-- GET /api/alerts: the caller's alerts, newest first. Reads straight from SQLite: only changes
-- go through the alerts process.
local http = require("http")
local sql = require("sql")
local api = require("api")

local LIMIT = 200

local function handler()
    local res = http.response()
    local me = api.authorized(res, "api.read", "alerts")
    if not me then
        return
    end
    local db, err = sql.get("app:db")
    if err then
        return api.reply(res, http.STATUS.SERVICE_UNAVAILABLE, {error = "database unavailable"})
    end
    local rows, query_err = db:query([[
        SELECT id, symbol, direction, price, status, created_at, fired_at, fired_price
        FROM alerts WHERE user_id = ? ORDER BY id DESC LIMIT ?]], {me.user_id, LIMIT})
    db:release()
    if query_err then
        return api.reply(res, http.STATUS.INTERNAL_ERROR, {error = "query failed"})
    end
    api.reply(res, http.STATUS.OK, {alerts = rows})
end

return { handler = handler }
