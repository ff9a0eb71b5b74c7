-- GET /metrics: the node's counters in the Prometheus text format, for a scraper.
local http = require("http")
local metrics = require("metrics")

local function handler()
    local res = http.response()
    local text, err = metrics.text()
    if err then
        res:set_status(http.STATUS.INTERNAL_ERROR)
        res:write_json({error = tostring(err)})
        return
    end
    res:set_content_type(metrics.content_type())
    res:write(text)
end

return { handler = handler }
