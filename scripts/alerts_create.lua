-- POST /api/alerts {symbol, above | below}: asks the alerts process to create the alert and
-- waits for its reply; no reply in time → 504 with the request's ref_id.
local http = require("http")
local api = require("api")

-- The alert's direction and price, or nil and what is wrong with the body.
local function parse(body)
    if type(body) ~= "table" then
        return nil, "body must be a JSON object"
    end
    if type(body.symbol) ~= "string" or #body.symbol == 0 then
        return nil, "symbol required"
    end
    if (body.above == nil) == (body.below == nil) then
        return nil, "give exactly one of above or below"
    end
    local direction = body.above ~= nil and "above" or "below"
    local price = body[direction]
    if type(price) ~= "number" or price <= 0 or price ~= price or price == math.huge then
        return nil, direction .. " must be a positive number"
    end
    return {symbol = body.symbol, direction = direction, price = price}
end

local function handler()
    local req = http.request()
    local res = http.response()
    local me = api.authorized(res, "api.trade", "alerts")
    if not me then
        return
    end
    local body, parse_err = req:body_json()
    if parse_err then
        return api.reply(res, http.STATUS.BAD_REQUEST, {error = "invalid JSON"})
    end
    local alert, invalid = parse(body)
    if not alert then
        return api.reply(res, http.STATUS.BAD_REQUEST, {error = invalid})
    end
    alert.user_id = me.user_id
    local answer, ref_id, err = api.call_alerts("create", alert)
    if not answer then
        return api.reply_call_failure(res, ref_id, err)
    end
    if answer.unavailable then
        return api.reply(res, http.STATUS.SERVICE_UNAVAILABLE, {error = answer.unavailable, ref_id = ref_id})
    end
    if answer.error then
        return api.reply(res, http.STATUS.BAD_REQUEST, {error = answer.error, ref_id = ref_id})
    end
    api.reply(res, http.STATUS.CREATED, {alert = answer.alert, ref_id = ref_id})
end

return { handler = handler }
