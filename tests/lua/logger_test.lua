-- logger module (§6.3): run by the runtime's Lua test harness; returns "ok" when every assert holds.
-- Output goes to the runtime's log; this script checks call shapes and return values.
local logger = require("logger")

-- both call styles, with and without fields
logger:info("handler started", {user_id = "u1"})
logger.info("dot call", {n = 1})
logger:debug("debug line")
logger:warn("warn line", {data = {a = 1, list = {1, 2}}})
logger:error("spawn failed", {error = tostring(errors.new("boom"))})
logger:error("with error object", {error = errors.new("boom")})
logger:info("demo API key created", {api_key = "abc"})

-- children
local child = logger:with({request_id = "r1"})
assert(type(child) == "table")
child:info("child line")
child.info("child dot call", {extra = true})
local named, err = logger:named("auth")
assert(err == nil and named ~= nil)
named:info("named line")
local deeper = named:with({k = "v"}):named("db")
deeper:warn("deeper line")

-- errors
local none, nerr = logger:named("")
assert(none == nil and errors.is(nerr, errors.INVALID))
assert(not pcall(logger.info, logger, {}))  -- message must be a string

return "ok"
