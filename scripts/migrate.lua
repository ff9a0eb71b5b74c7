-- Creates and upgrades the schema, then makes sure the demo key exists. Runs as a one-shot
-- service. Every step is idempotent, so a database from any earlier version (the tutorial's
-- single api_keys table included) is upgraded in place and nothing in it is lost.
local sql = require("sql")
local logger = require("logger")
local crypto = require("crypto")

local TABLES = {
    [[CREATE TABLE IF NOT EXISTS api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        api_key TEXT UNIQUE NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT 'user',
        created_at INTEGER NOT NULL
    )]],
    [[CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY,
        email TEXT UNIQUE COLLATE NOCASE,
        role TEXT NOT NULL DEFAULT 'user',
        password_hash TEXT,
        created_at INTEGER NOT NULL
    )]],
    [[CREATE TABLE IF NOT EXISTS alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('above', 'below')),
        price REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'open',
        created_at INTEGER NOT NULL,
        fired_at INTEGER,
        fired_price REAL
    )]],
    "CREATE INDEX IF NOT EXISTS alerts_by_user ON alerts (user_id, id)",
    "CREATE INDEX IF NOT EXISTS alerts_open ON alerts (status)",
}

-- Columns added to the tutorial's api_keys table: a key's permissions, the salt and hash of
-- its signing secret (the secret itself is never stored), and when it was revoked.
local KEY_COLUMNS = {
    {name = "permissions", ddl = "permissions TEXT NOT NULL DEFAULT 'read,trade'"},
    {name = "secret_salt", ddl = "secret_salt TEXT"},
    {name = "secret_hash", ddl = "secret_hash TEXT"},
    {name = "revoked_at", ddl = "revoked_at INTEGER"},
}

local function add_missing_columns(db)
    local existing, err = db:query("SELECT name FROM pragma_table_info('api_keys')")
    if err then
        return nil, err
    end
    local have = {}
    for _, row in ipairs(existing) do
        have[row.name] = true
    end
    for _, column in ipairs(KEY_COLUMNS) do
        if not have[column.name] then
            local _, alter_err = db:execute("ALTER TABLE api_keys ADD COLUMN " .. column.ddl)
            if alter_err then
                return nil, alter_err
            end
            logger:info("api_keys upgraded", {column = column.name})
        end
    end
    return true
end

-- Every key owner becomes a user (the tutorial's keys name users that had no table).
local function backfill_users(db)
    local _, err = db:execute([[
        INSERT OR IGNORE INTO users (id, role, created_at)
        SELECT user_id, MIN(role), MIN(created_at) FROM api_keys GROUP BY user_id
    ]])
    return err == nil, err
end

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
    local now = os.time()
    local _, user_err = db:execute(
        "INSERT OR IGNORE INTO users (id, role, created_at) VALUES (?, ?, ?)", {"demo", "user", now})
    if user_err then
        return nil, user_err
    end
    local _, insert_err = db:execute(
        "INSERT INTO api_keys (api_key, user_id, role, created_at) VALUES (?, ?, ?, ?)",
        {key, "demo", "user", now}
    )
    if insert_err then
        return nil, insert_err
    end
    logger:info("demo API key created", {api_key = key})
    return true
end

local function migrate(db)
    for _, ddl in ipairs(TABLES) do
        local _, err = db:execute(ddl)
        if err then
            return nil, err
        end
    end
    local ok, err = add_missing_columns(db)
    if not ok then
        return nil, err
    end
    ok, err = backfill_users(db)
    if not ok then
        return nil, err
    end
    return ensure_demo_key(db)
end

local function main()
    local db, err = sql.get("app:db")
    if err then
        logger:error("database unavailable", {error = tostring(err)})
        return nil, err
    end
    local ok, migrate_err = migrate(db)
    db:release()
    if not ok then
        logger:error("migration failed", {error = tostring(migrate_err)})
        return nil, migrate_err
    end
    return 0
end

return { main = main }
