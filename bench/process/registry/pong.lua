-- Ping-pong partner: echoes each payload back to the pinger until "stop".
local function main(pinger)
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        if msg:topic() == "stop" then
            return
        end
        process.send(pinger, "pong", (msg:payload():data()))
    end
end

return { main = main }
