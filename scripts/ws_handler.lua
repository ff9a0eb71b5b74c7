-- One process per WebSocket connection: greets the client, subscribes it to the ticker and to
-- its owner's alerts, answers pings, and unsubscribes when the relay says the client left.
local logger = require("logger")
local json = require("json")

local function send_json(client_pid, message)
    process.send(client_pid, "ws.send", {type = "text", data = json.encode(message)})
end

local function on_join(state, data)
    state.client_pid = data.client_pid
    -- Welcome first: the ticker answers a subscribe with a snapshot, which must come second.
    send_json(state.client_pid, {type = "welcome", user_id = state.user_id})
    process.send("ticker", "subscribe", {client_pid = state.client_pid, handler_pid = process.pid()})
    state.subscribed = true
    if state.owner then
        -- Best effort: without a running alerts process the ticker still works.
        process.send("alerts", "watch", {user_id = state.owner, handler_pid = process.pid(), client_pid = state.client_pid})
    end
    logger:info("client joined", {user_id = state.user_id, client_pid = state.client_pid})
end

local function on_message(state, data)
    local content = json.decode(data.data)
    if type(content) == "table" and content.type == "ping" then
        send_json(state.client_pid, {type = "pong"})
    end
end

local function on_leave(state, data)
    logger:info("client left", {user_id = state.user_id, reason = data.reason})
    if state.subscribed then
        process.send("ticker", "unsubscribe", {handler_pid = process.pid()})
    end
    if state.owner then
        process.send("alerts", "unwatch", {handler_pid = process.pid()})
    end
end

-- `owner` is the users.id behind the connection (nil for a key without a user row), read by
-- the upgrade handler from the actor it authenticated: the handler needs no actor of its own.
local function main(user_id, owner)
    local state = {user_id = user_id, owner = owner, client_pid = nil, subscribed = false}
    local inbox = process.inbox()
    logger:info("handler started", {user_id = user_id})

    while true do
        local msg, ok = inbox:receive()
        if not ok then break end
        local topic = msg:topic()
        local data = msg:payload():data()
        if topic == "ws.join" then
            on_join(state, data)
        elseif topic == "ws.message" then
            on_message(state, data)
        elseif topic == "ws.leave" then
            on_leave(state, data)
            break
        end
    end
    return 0
end

return { main = main }
