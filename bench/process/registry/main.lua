-- The issue-2 process-model benchmark driver. Runs the measurement named by `only` (all three
-- without it) once per start of the binary (run.sh starts one binary per measurement, three
-- times, and takes medians) and logs one line per result:
--   bench result name=<spawn|pingpong|broadcast> ops=<n> seconds=<s> per_sec=<ops/s>
-- Timing is wall clock (time.now():unix_nano()); os.clock() is CPU time of every thread.
local logger = require("logger")
local time = require("time")

local function now()
    return time.now():unix_nano() / 1e9
end

local function report(name, ops, seconds)
    logger:info("bench result", {
        name = name,
        ops = ops,
        seconds = string.format("%.6f", seconds),
        per_sec = math.floor(ops / seconds),
    })
end

local function spawn(id, ...)
    local pid, err = process.spawn(id, "bench:host", ...)
    if not pid then
        error("spawn " .. id .. " failed: " .. tostring(err))
    end
    return pid
end

-- Spawns `n` idle processes in batches and waits for every one of them to say "ready" (sent
-- right before its blocking inbox:receive(), in the same run slice). The clock stops when the
-- last ack has been received, so it covers spawn + first run to the receive + one message each.
-- Batches keep the spawner's own queue of acks short, so it does not inflate the RSS reading.
local function spawn_idle(n, pids)
    local me = process.pid()
    local inbox = process.inbox()
    local batch = 1000
    local i = 0
    while i < n do
        local b = math.min(batch, n - i)
        for j = 1, b do
            pids[i + j] = spawn("bench:idle", me)
        end
        for _ = 1, b do
            inbox:receive()
        end
        i = i + b
    end
end

-- Stops the idle processes and waits until each has said "bye", so the next measurement
-- does not share the worker with 100,000 exits (not timed).
local function stop_all(pids)
    local inbox = process.inbox()
    for k = 1, #pids do
        process.send(pids[k], "stop")
    end
    for _ = 1, #pids do
        inbox:receive()
    end
end

local function bench_spawn(n, pause)
    -- Warm-up: first use of the code paths (and the worker's Lua state) is not measured.
    local warm = {}
    spawn_idle(100, warm)
    stop_all(warm)
    -- run.sh reads VmRSS when it sees this line, and again after "idle spawned".
    logger:info("idle before", { n = n })
    time.sleep(pause)
    local pids = {}
    local t0 = now()
    spawn_idle(n, pids)
    local secs = now() - t0
    report("spawn", n, secs)
    logger:info("idle spawned", { n = n })
    time.sleep(pause)
    stop_all(pids)
end

-- Round trips between this process and one partner on the same worker; the payload is the
-- counter, echoed back and checked, so every message is a real copy in and out.
local function bench_pingpong(n)
    local me = process.pid()
    local inbox = process.inbox()
    local pong = spawn("bench:pong", me)
    local function rounds(count)
        for i = 1, count do
            process.send(pong, "ping", i)
            local msg = inbox:receive()
            if msg:payload():data() ~= i then
                error("pong out of order")
            end
        end
    end
    rounds(1000)
    local t0 = now()
    rounds(n)
    local secs = now() - t0
    process.send(pong, "stop")
    report("pingpong", n, secs)
end

-- One process sends the same 300-byte string to each of `n` receivers, `rounds` times; each
-- receiver turns every payload into a Lua string and acks once after its last one ("done",
-- carrying its byte count, checked here). The clock runs from the first send until the last ack.
local function bench_broadcast(n, rounds)
    local me = process.pid()
    local inbox = process.inbox()
    local pids = {}
    for i = 1, n do
        pids[i] = spawn("bench:receiver", me, rounds)
    end
    for _ = 1, n do
        inbox:receive()
    end
    local s = string.rep("0123456789", 30)
    local done, bytes = 0, 0
    local function take(msg)
        if msg:topic() == "done" then
            done = done + 1
            bytes = bytes + msg:payload():data()
        end
        return msg:topic()
    end
    local t0 = now()
    for _ = 1, rounds do
        for i = 1, n do
            process.send(pids[i], "b", s)
        end
        -- Let the receivers run between rounds: a message to self, received, puts this
        -- process at the back of the worker's queue (Erlang's sender is likewise preempted
        -- by reductions). Acks that arrive meanwhile are counted.
        process.send(me, "yield")
        while take(inbox:receive()) ~= "yield" do
        end
    end
    while done < n do
        take(inbox:receive())
    end
    local secs = now() - t0
    if bytes ~= n * rounds * #s then
        error("broadcast lost data: " .. bytes)
    end
    report("broadcast", n * rounds, secs)
end

local function main(cfg)
    cfg = cfg or {}
    local pause = (cfg.rss_pause_ms or 700) .. "ms"
    local only = cfg.only
    if not only or only == "spawn" then
        bench_spawn(cfg.spawn_n or 100000, pause)
    end
    if not only or only == "pingpong" then
        bench_pingpong(cfg.pingpong_n or 200000)
    end
    if not only or only == "broadcast" then
        bench_broadcast(cfg.bcast_n or 10000, cfg.bcast_rounds or 10)
    end
    logger:info("bench done")
end

return { main = main }
