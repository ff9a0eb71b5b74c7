-- POST /auth/token {"api_key": K} → an HMAC-signed token carrying the key owner's identity.
local http = require("http")
local sql = require("sql")
local security = require("security")

local TOKEN_TTL_SECONDS = 3600

local function reply(res, status, body)
    res:set_status(status)
    res:write_json(body)
end

local function find_key(api_key)
    local db, err = sql.get("app:db")
    if err then
        return nil, "database unavailable"
    end
    local rows, query_err = db:query("SELECT user_id, role FROM api_keys WHERE api_key = ?", {api_key})
    db:release()
    if query_err then
        return nil, "database unavailable"
    end
    return rows[1]
end

local function handler()
    local req = http.request()
    local res = http.response()

    local body, parse_err = req:body_json()
    if parse_err or type(body) ~= "table" then
        return reply(res, http.STATUS.BAD_REQUEST, {error = "invalid JSON"})
    end
    local api_key = body.api_key
    if type(api_key) ~= "string" or #api_key == 0 then
        return reply(res, http.STATUS.BAD_REQUEST, {error = "api_key required"})
    end

    local user, lookup_err = find_key(api_key)
    if lookup_err then
        return reply(res, http.STATUS.INTERNAL_ERROR, {error = lookup_err})
    end
    if not user then
        return reply(res, http.STATUS.UNAUTHORIZED, {error = "invalid API key"})
    end

    local actor = security.new_actor("user:" .. user.user_id, {role = user.role, user_id = user.user_id})
    local policy = security.policy("app:user_policy")
    local scope = policy and security.new_scope({policy}) or security.new_scope()

    local store, store_err = security.token_store("app:tokens")
    if store_err then
        return reply(res, http.STATUS.INTERNAL_ERROR, {error = "token store unavailable"})
    end
    local token, token_err = store:create(actor, scope, {
        expiration = TOKEN_TTL_SECONDS .. "s",
        meta = {ip = req:remote_addr()},
    })
    store:close()
    if token_err then
        return reply(res, http.STATUS.INTERNAL_ERROR, {error = "token creation failed"})
    end

    res:write_json({token = token, user_id = user.user_id, role = user.role, expires_in = TOKEN_TTL_SECONDS})
end

return { handler = handler }
