-- Creates the API-key table and, once, a demo key. Runs as a one-shot service.
local sql = require("sql")
local logger = require("logger")
local crypto = require("crypto")

local SCHEMA = [[
    CREATE TABLE IF NOT EXISTS api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        api_key TEXT UNIQUE NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT 'user',
        created_at INTEGER NOT NULL
    )
]]

local function ensure_demo_key(db)
    local rows, err = db:query("SELECT api_key FROM api_keys WHERE user_id = ?", {"demo"})
    if err then
        return nil, err
    end
    if #rows > 0 then
        logger:info("demo API key exists", {api_key = rows[1].api_key})
        return true
    end
    local key, key_err = crypto.random.string(32)
    if key_err then
        return nil, key_err
    end
    local _, insert_err = db:execute(
        "INSERT INTO api_keys (api_key, user_id, role, created_at) VALUES (?, ?, ?, ?)",
        {key, "demo", "user", os.time()}
    )
    if insert_err then
        return nil, insert_err
    end
    logger:info("demo API key created", {api_key = key})
    return true
end

local function main()
    local db, err = sql.get("app:db")
    if err then
        logger:error("database unavailable", {error = tostring(err)})
        return nil, err
    end
    local _, schema_err = db:execute(SCHEMA)
    if schema_err then
        db:release()
        logger:error("migration failed", {error = tostring(schema_err)})
        return nil, schema_err
    end
    local ok, demo_err = ensure_demo_key(db)
    db:release()
    if not ok then
        logger:error("demo key setup failed", {error = tostring(demo_err)})
        return nil, demo_err
    end
    return 0
end

return { main = main }
