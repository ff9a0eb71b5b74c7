-- The alerts process (registered as "alerts"): owns every change to the alerts table, watches
-- the ticker's prices, and tells the owner's open WebSockets when an alert fires (once; the
-- row is then marked fired). HTTP handlers talk to it by request→reply with a ref_id.
local sql = require("sql")
local json = require("json")
local logger = require("logger")
local time = require("time")

-- Checked this often: no price since the last check means the ticker was not there yet or
-- has restarted (a new pid without our subscription), so subscribe again.
local WATCHDOG = "500ms"
local COLUMNS = "id, user_id, symbol, direction, price, status, created_at, fired_at, fired_price"

local state = {
    open = {},      -- alert id -> alert row (status open)
    watchers = {},  -- user_id -> {handler_pid -> client_pid}
    owners = {},    -- handler_pid -> user_id
    prices = {},    -- symbol -> last price
    ticks_since_check = 0,
}

local function with_db(fn)
    local db, err = sql.get("app:db")
    if err then
        return nil, err
    end
    local a, b = fn(db)
    db:release()
    return a, b
end

-- The migration runs beside this process at start; give it a moment to create the table.
local SCHEMA_WAIT_ATTEMPTS = 50

local function load_open_alerts()
    local rows, err
    for _ = 1, SCHEMA_WAIT_ATTEMPTS do
        rows, err = with_db(function(db)
            return db:query("SELECT " .. COLUMNS .. " FROM alerts WHERE status = 'open'")
        end)
        if not (err and tostring(err):find("no such table", 1, true)) then
            break
        end
        time.sleep("100ms")
    end
    if err then
        return nil, err
    end
    for _, row in ipairs(rows) do
        state.open[row.id] = row
    end
    return #rows
end

local function subscribe()
    process.send("ticker", "subscribe", {client_pid = process.pid(), handler_pid = process.pid()})
end

local function reply(to, ref_id, body)
    body.ref_id = ref_id
    process.send(to, "alerts.reply", body)
end

local function create(req)
    if next(state.prices) == nil then
        return reply(req.reply_to, req.ref_id, {unavailable = "no prices yet; try again shortly"})
    end
    if state.prices[req.symbol] == nil then
        return reply(req.reply_to, req.ref_id, {error = "unknown symbol " .. tostring(req.symbol)})
    end
    local now = os.time()
    local row, err = with_db(function(db)
        local r, e = db:execute(
            "INSERT INTO alerts (user_id, symbol, direction, price, status, created_at) VALUES (?, ?, ?, ?, 'open', ?)",
            {req.user_id, req.symbol, req.direction, req.price, now})
        if e then
            return nil, e
        end
        local rows, qe = db:query("SELECT " .. COLUMNS .. " FROM alerts WHERE id = ?", {r.last_insert_id})
        return rows and rows[1], qe
    end)
    if err or not row then
        logger:error("alert insert failed", {error = tostring(err)})
        return reply(req.reply_to, req.ref_id, {error = "could not store the alert"})
    end
    state.open[row.id] = row
    logger:info("alert created", {id = row.id, user_id = row.user_id, symbol = row.symbol})
    reply(req.reply_to, req.ref_id, {alert = row})
end

local function delete(req)
    local result, err = with_db(function(db)
        return db:execute("DELETE FROM alerts WHERE id = ? AND user_id = ?", {req.id, req.user_id})
    end)
    if err then
        return reply(req.reply_to, req.ref_id, {error = "could not delete the alert"})
    end
    if result.rows_affected > 0 then
        state.open[req.id] = nil
    end
    reply(req.reply_to, req.ref_id, {deleted = result.rows_affected > 0})
end

local function watch(req)
    local per_user = state.watchers[req.user_id] or {}
    per_user[req.handler_pid] = req.client_pid
    state.watchers[req.user_id] = per_user
    state.owners[req.handler_pid] = req.user_id
    process.monitor(req.handler_pid)
end

local function unwatch(handler_pid)
    local user_id = state.owners[handler_pid]
    if not user_id then
        return
    end
    state.owners[handler_pid] = nil
    local per_user = state.watchers[user_id]
    if per_user then
        per_user[handler_pid] = nil
        if next(per_user) == nil then
            state.watchers[user_id] = nil
        end
    end
end

local function crossed(alert, price)
    if alert.direction == "above" then
        return price >= alert.price
    end
    return price <= alert.price
end

local function fire(alert, price)
    local now = os.time()
    local result, err = with_db(function(db)
        return db:execute(
            "UPDATE alerts SET status = 'fired', fired_at = ?, fired_price = ? WHERE id = ? AND status = 'open'",
            {now, price, alert.id})
    end)
    if err then
        -- Left open: the next tick tries again.
        logger:error("alert update failed", {id = alert.id, error = tostring(err)})
        return
    end
    state.open[alert.id] = nil
    if result.rows_affected == 0 then
        return -- deleted meanwhile
    end
    alert.status, alert.fired_at, alert.fired_price = "fired", now, price
    local frame = json.encode({type = "alert", alert = alert})
    for _, client_pid in pairs(state.watchers[alert.user_id] or {}) do
        process.send(client_pid, "ws.send", {type = "text", data = frame})
    end
    logger:info("alert fired", {id = alert.id, user_id = alert.user_id, symbol = alert.symbol, price = price})
end

local function on_prices(frame)
    local snapshot = json.decode(frame)
    if type(snapshot) ~= "table" or snapshot.type ~= "ticker" then
        return
    end
    state.ticks_since_check = state.ticks_since_check + 1
    for _, update in ipairs(snapshot.data or {}) do
        state.prices[update.symbol] = update.price
    end
    for _, alert in pairs(state.open) do
        local price = state.prices[alert.symbol]
        if price and crossed(alert, price) then
            fire(alert, price)
        end
    end
end

local HANDLERS = {
    create = create,
    delete = delete,
    watch = watch,
    unwatch = function(req) unwatch(req.handler_pid) end,
    ["ws.send"] = function(msg) on_prices(msg.data) end,
}

local function main()
    process.registry.register("alerts")
    local count, err = load_open_alerts()
    if err then
        logger:error("alerts unavailable", {error = tostring(err)})
        return nil, err
    end
    logger:info("alerts started", {open = count})
    subscribe()
    local inbox = process.inbox()
    local events = process.events()
    local watchdog = time.ticker(WATCHDOG)
    local checks = watchdog:response()
    while true do
        local r = channel.select {inbox:case_receive(), events:case_receive(), checks:case_receive()}
        if r.channel == inbox then
            local handle = HANDLERS[r.value:topic()]
            local data = r.value:payload():data()
            if handle and type(data) == "table" then
                handle(data)
            end
        elseif r.channel == events then
            if r.value.kind == process.event.EXIT then
                unwatch(r.value.from)
            elseif r.value.kind == process.event.CANCEL then
                return 0
            end
        else
            if state.ticks_since_check == 0 then
                subscribe()
            end
            state.ticks_since_check = 0
        end
    end
end

return { main = main }
