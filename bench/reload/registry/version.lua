-- GET /bench/version: answers the number run.sh last wrote here.
local http = require("http")

local VERSION = 0

return { handler = function() http.response():write(tostring(VERSION)) end }
