-- Broadcast receiver: acks "ready", receives `rounds` messages (turning each payload into a Lua
-- string, as a real script would), then reports the bytes it got.
local function main(parent, rounds)
    local inbox = process.inbox()
    process.send(parent, "ready")
    local bytes = 0
    for _ = 1, rounds do
        local msg = inbox:receive()
        bytes = bytes + #(msg:payload():data())
    end
    process.send(parent, "done", bytes)
end

return { main = main }
