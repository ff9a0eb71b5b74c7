-- An idle process: tells the spawner it is about to block, then blocks in inbox:receive()
-- until the driver's "stop" (after the memory reading), which it acknowledges before exiting.
local function main(parent)
    local inbox = process.inbox()
    process.send(parent, "ready")
    inbox:receive()
    process.send(parent, "bye")
end

return { main = main }
