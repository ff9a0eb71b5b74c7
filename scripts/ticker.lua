-- The singleton price broadcaster: a random walk for three symbols every 10 ms, sent to every
-- subscribed client and written to the cache behind GET /api/ticker. Subscribers are
-- monitored, so a handler that dies is dropped.
local logger = require("logger")
local store = require("store")
local time = require("time")
local json = require("json")
local crypto = require("crypto")

local TICK = "10ms"
local CACHE_KEY = "ticker:snapshot"
local SYMBOLS = {"BTC-USD", "ETH-USD", "SOL-USD"}

-- handler_pid -> client_pid
local subscriptions = {}
local prices = {["BTC-USD"] = 42000.00, ["ETH-USD"] = 2500.00, ["SOL-USD"] = 95.00}

local function step_prices()
    local bytes = crypto.random.bytes(2 * #SYMBOLS)
    for i, symbol in ipairs(SYMBOLS) do
        local rand = (bytes:byte(2 * i - 1) * 256 + bytes:byte(2 * i)) / 65535.0
        local next_price = prices[symbol] * (1 + (rand - 0.5) * 0.002)
        prices[symbol] = tonumber(string.format("%.2f", next_price))
    end
end

local function snapshot()
    local now = os.time()
    local updates = {}
    for _, symbol in ipairs(SYMBOLS) do
        updates[#updates + 1] = {symbol = symbol, price = prices[symbol], timestamp = now}
    end
    return json.encode({type = "ticker", data = updates})
end

-- One conversion of the frame, shared by every subscriber's queue.
local function broadcast(frame)
    process.broadcast(subscriptions, "ws.send", {type = "text", data = frame})
end

local function on_message(msg)
    local topic = msg:topic()
    local data = msg:payload():data()
    if topic == "subscribe" then
        subscriptions[data.handler_pid] = data.client_pid
        process.monitor(data.handler_pid)
        logger:info("subscribed", {handler_pid = data.handler_pid, client_pid = data.client_pid})
        process.send(data.client_pid, "ws.send", {type = "text", data = snapshot()})
    elseif topic == "unsubscribe" then
        subscriptions[data.handler_pid] = nil
        process.unmonitor(data.handler_pid)
        logger:info("unsubscribed", {handler_pid = data.handler_pid})
    end
end

local function main()
    local inbox = process.inbox()
    local events = process.events()
    local ticker, err = time.ticker(TICK)
    if err then
        logger:error("failed to create ticker", {error = tostring(err)})
        return nil, err
    end
    local ticks = ticker:response()
    local cache, cache_err = store.get("app:cache")
    if cache_err then
        logger:warn("price cache unavailable; GET /api/ticker will answer 503", {error = tostring(cache_err)})
    end
    process.registry.register("ticker")
    logger:info("ticker started", {pid = process.pid()})

    while true do
        local r = channel.select {inbox:case_receive(), events:case_receive(), ticks:case_receive()}
        if r.channel == ticks then
            step_prices()
            local frame = snapshot()
            if cache then
                cache:set(CACHE_KEY, frame)
            end
            if next(subscriptions) then
                broadcast(frame)
            end
        elseif r.channel == events then
            local event = r.value
            if event.kind == process.event.EXIT and subscriptions[event.from] then
                logger:info("handler exited", {handler_pid = event.from})
                subscriptions[event.from] = nil
            elseif event.kind == process.event.CANCEL then
                logger:info("ticker stopping", {reason = event.reason})
                return 0
            end
        else
            on_message(r.value)
        end
    end
end

return { main = main }
