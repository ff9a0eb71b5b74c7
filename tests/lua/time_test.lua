-- time module values (§6.4): run by the runtime's Lua test harness; returns "ok" when every assert holds.
-- sleep/after/timer/ticker belong to the scheduler and are tested with it.
local time = require("time")

local function invalid(v, err)
    return v == nil and err ~= nil and errors.is(err, errors.INVALID)
end

-- constants
assert(time.SECOND == 1000000000 and time.MINUTE == 60 * time.SECOND and time.HOUR == 60 * time.MINUTE)
assert(time.NANOSECOND == 1 and time.MICROSECOND == 1000 and time.MILLISECOND == 1000000)
assert(time.RFC3339 == "2006-01-02T15:04:05Z07:00" and time.DATE_ONLY == "2006-01-02")
assert(time.JANUARY == 1 and time.DECEMBER == 12 and time.SUNDAY == 0 and time.SATURDAY == 6)

-- construction and components
local t = time.date(2024, time.DECEMBER, 25, 10, 30, 0, 0, time.utc)
assert(t:format_rfc3339() == "2024-12-25T10:30:00Z")
assert(t:year() == 2024 and t:month() == 12 and t:day() == 25)
assert(t:hour() == 10 and t:minute() == 30 and t:second() == 0 and t:nanosecond() == 0)
assert(t:weekday() == time.WEDNESDAY and t:year_day() == 360)
local y, m, d = t:date()
assert(y == 2024 and m == 12 and d == 25)
local h, mi, s = t:clock()
assert(h == 10 and mi == 30 and s == 0)
assert(not t:is_zero())
assert(time.date(1, 1, 1, 0, 0, 0, 0, time.utc):is_zero())

local u = time.unix(1703862245, 0)
assert(u:utc():format_rfc3339() == "2023-12-29T15:04:05Z")
assert(u:unix() == 1703862245 and u:unix_nano() == 1703862245000000000)
local js = 1703862245123
assert(time.unix(js // 1000, (js % 1000) * 1000000):nanosecond() == 123000000)

local now = time.now()
assert(math.abs(now:unix() - os.time()) <= 2)

-- formatting
assert(t:format(time.DATE_ONLY) == "2024-12-25")
assert(t:format(time.TIME_ONLY) == "10:30:00")
assert(t:format("Mon Jan 2, 2006") == "Wed Dec 25, 2024")
assert(t:format(time.KITCHEN) == "10:30AM")
assert(t:format(time.RFC1123) == "Wed, 25 Dec 2024 10:30:00 UTC")

-- parsing
local p, err = time.parse(time.RFC3339, "2024-12-29T15:04:05Z")
assert(err == nil and p:unix() == 1735484645)
p = time.parse(time.RFC3339, "2024-12-29T15:04:05+02:00")
assert(p:utc():format(time.DATE_TIME) == "2024-12-29 13:04:05")
assert(time.parse("2006-01-02", "2024-12-29"):day() == 29)
assert(time.parse("15:04:05", "14:30:00"):hour() == 14)
assert(time.parse(time.DATE_TIME, "2024-01-02 03:04:05"):format_rfc3339() == "2024-01-02T03:04:05Z")
assert(invalid(time.parse(time.RFC3339, "invalid")))
assert(invalid(time.parse(time.DATE_ONLY, "2024-02-30")))

-- arithmetic
local tomorrow = t:add("24h")
assert(tomorrow:sub(t):hours() == 24)
assert(t:add(5 * time.MINUTE):minute() == 35)
assert(t:add(-time.HOUR):hour() == 9)
local dd = time.parse_duration("1h30m")
assert(t:add(dd):format(time.TIME_ONLY) == "12:00:00")
assert(t:add_date(0, 1, 0):format(time.DATE_ONLY) == "2025-01-25")
assert(t:add_date(0, 0, -7):format(time.DATE_ONLY) == "2024-12-18")
assert(time.date(2024, 1, 31, 0, 0, 0, 0, time.utc):add_date(0, 1, 0):format(time.DATE_ONLY) == "2024-03-02")

-- comparison
local t1 = time.date(2024, 1, 1, 0, 0, 0, 0, time.utc)
local t2 = time.date(2024, 1, 2, 0, 0, 0, 0, time.utc)
assert(t1:before(t2) and t2:after(t1) and t1:equal(t1) and not t1:equal(t2))
assert(t1 < t2 and t1 == time.unix(t1:unix(), 0))

-- zones
local ist = time.fixed_zone("IST", 5 * 3600 + 30 * 60)
local ti = time.date(2024, 1, 15, 12, 0, 0, 0, ist)
assert(ti:format_rfc3339() == "2024-01-15T12:00:00+05:30")
assert(ti:utc():format_rfc3339() == "2024-01-15T06:30:00Z")
assert(ti:location():string() == "IST")
assert(t:in_location(ist):hour() == 16)
assert(tostring(time.utc) == "UTC")
local loc, lerr = time.load_location("UTC")
assert(lerr == nil and loc:string() == "UTC")
local missing, merr = time.load_location("Unknown/Zone")
assert(missing == nil and errors.is(merr, errors.NOT_FOUND))
assert(invalid(time.load_location("")))

-- rounding
local r = time.date(2024, 1, 1, 10, 44, 30, 0, time.utc)
assert(r:truncate(time.parse_duration("15m")):format(time.TIME_ONLY) == "10:30:00")
assert(r:round(time.parse_duration("1h")):format(time.TIME_ONLY) == "11:00:00")

-- durations
local d2 = time.parse_duration("1h30m45s500ms")
assert(d2:seconds() == 5445.5 and d2:milliseconds() == 5445500)
assert(d2:microseconds() == 5445500000 and d2:nanoseconds() == 5445500000000)
assert(math.abs(d2:hours() - 1.5126388) < 1e-6 and math.abs(d2:minutes() - 90.7583333) < 1e-6)
assert(time.parse_duration(time.SECOND):seconds() == 1)
assert(time.parse_duration("7d"):hours() == 168)
assert(tostring(time.parse_duration("1h2m3.5s")) == "1h2m3.5s")
assert(invalid(time.parse_duration("5 parsecs")))

return "ok"
