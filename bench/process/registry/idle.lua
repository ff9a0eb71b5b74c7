-- An idle process: tells the spawner it is about to block, then blocks in inbox:receive()
-- until any message arrives (the driver sends "stop" after the memory reading).
local function main(parent)
    local inbox = process.inbox()
    process.send(parent, "ready")
    inbox:receive()
end

return { main = main }
