-- POST /auth/token → an HMAC-signed token carrying the caller's identity and permissions.
-- Credentials: {"api_key": K} for keys without a signing secret (the tutorial's demo key), or
-- anything the api_auth middleware already verified (Basic email/password, a signed request,
-- an internal token); the middleware refuses bad credentials before this handler runs.
local http = require("http")
local sql = require("sql")
local security = require("security")

local TOKEN_TTL_SECONDS = 3600
-- Each permission a key carries is granted by one policy (the same mapping as the router's
-- api_auth.policy.* options).
local PERMISSION_POLICIES = {read = "app:read_policy", trade = "app:trade_policy"}

local function reply(res, status, body)
    res:set_status(status)
    res:write_json(body)
end

local function split_permissions(text)
    local out = {}
    for p in string.gmatch(text or "", "[^,%s]+") do
        out[#out + 1] = p
    end
    return out
end

local function find_key(api_key)
    local db, err = sql.get("app:db")
    if err then
        return nil, "database unavailable"
    end
    local rows, query_err = db:query([[
        SELECT k.user_id, COALESCE(u.role, k.role) AS role, k.permissions, k.secret_hash, k.revoked_at
        FROM api_keys k LEFT JOIN users u ON u.id = k.user_id WHERE k.api_key = ?]], {api_key})
    db:release()
    if query_err then
        return nil, "database unavailable"
    end
    return rows[1]
end

local function scope_for(permissions)
    local policies = {}
    for _, p in ipairs(permissions) do
        local policy = PERMISSION_POLICIES[p] and security.policy(PERMISSION_POLICIES[p])
        if policy then
            policies[#policies + 1] = policy
        end
    end
    return security.new_scope(policies)
end

-- The caller of the {"api_key": K} form, or nil plus the HTTP status and error.
local function key_holder(req)
    local body, parse_err = req:body_json()
    if parse_err or type(body) ~= "table" then
        return nil, http.STATUS.BAD_REQUEST, "invalid JSON"
    end
    local api_key = body.api_key
    if type(api_key) ~= "string" or #api_key == 0 then
        return nil, http.STATUS.BAD_REQUEST, "api_key required"
    end
    local key, lookup_err = find_key(api_key)
    if lookup_err then
        return nil, http.STATUS.INTERNAL_ERROR, lookup_err
    end
    if not key then
        return nil, http.STATUS.UNAUTHORIZED, "invalid API key"
    end
    if key.revoked_at then
        return nil, http.STATUS.UNAUTHORIZED, "API key revoked"
    end
    if key.secret_hash then
        return nil, http.STATUS.UNAUTHORIZED, "this key has a secret: sign the request (API-Key, API-Timestamp, API-Signature)"
    end
    local permissions = split_permissions(key.permissions or "read,trade")
    local actor = security.new_actor("user:" .. key.user_id, {
        user_id = key.user_id, role = key.role, permissions = permissions, auth = "token", key = api_key,
    })
    return {actor = actor, scope = scope_for(permissions), user_id = key.user_id, role = key.role, permissions = permissions}
end

-- A caller the middleware authenticated, re-issued as a token-store token.
local function verified_caller(actor)
    local meta = actor:meta()
    meta.auth = "token"
    local permissions = meta.permissions or {}
    return {
        actor = security.new_actor(actor:id(), meta),
        scope = security.scope() or scope_for(permissions),
        user_id = meta.user_id, role = meta.role, permissions = permissions,
    }
end

local function handler()
    local req = http.request()
    local res = http.response()

    local caller, status, message
    local actor = security.actor()
    if actor then
        caller = verified_caller(actor)
    else
        caller, status, message = key_holder(req)
        if not caller then
            return reply(res, status, {error = message})
        end
    end

    local store, store_err = security.token_store("app:tokens")
    if store_err then
        return reply(res, http.STATUS.INTERNAL_ERROR, {error = "token store unavailable"})
    end
    local token, token_err = store:create(caller.actor, caller.scope, {
        expiration = TOKEN_TTL_SECONDS .. "s",
        meta = {ip = req:remote_addr()},
    })
    store:close()
    if token_err then
        return reply(res, http.STATUS.INTERNAL_ERROR, {error = "token creation failed"})
    end

    res:write_json({
        token = token, user_id = caller.user_id, role = caller.role,
        permissions = caller.permissions, expires_in = TOKEN_TTL_SECONDS,
    })
end

return { handler = handler }
