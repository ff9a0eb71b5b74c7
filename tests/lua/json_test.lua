-- json module (§6.2): run by the runtime's Lua test harness; returns "ok" when every assert holds.
local json = require("json")

-- scalars
assert(json.encode(nil) == "null")
assert(json.encode(true) == "true")
assert(json.encode(42) == "42")
assert(json.encode(1.5) == "1.5")
assert(json.encode("hi") == '"hi"')
assert(json.encode(0/0) == "null")
assert(json.encode(math.huge) == "null")

-- containers
assert(json.encode({}) == "[]")
assert(json.encode({1, 2, 3}) == "[1,2,3]")
assert(json.encode({"a", "b"}) == '["a","b"]')
assert(json.encode({name = "Alice", age = 30}) == '{"age":30,"name":"Alice"}')
assert(json.encode({items = {{sku = "ABC", qty = 2}}}) == '{"items":[{"qty":2,"sku":"ABC"}]}')
assert(json.encode({s = 'a"b\\c\n'}) == '{"s":"a\\"b\\\\c\\n"}')

-- unencodable values: nil, INTERNAL
local function internal(v, err)
    return v == nil and err ~= nil and errors.is(err, errors.INTERNAL)
end
assert(internal(json.encode({1, 2, x = 3})))          -- mixed keys
assert(internal(json.encode({[1] = "a", [3] = "c"}))) -- sparse
local cyc = {}
cyc.me = cyc
assert(internal(json.encode(cyc)))                    -- cycle
local deep = {}
for _ = 1, 200 do deep = {deep} end
assert(internal(json.encode(deep)))                   -- depth > 128
assert(internal(json.encode({f = function() end})))

-- decode
local user, err = json.decode('{"name":"Bob","active":true,"gone":null}')
assert(err == nil)
assert(user.name == "Bob" and user.active == true and user.gone == nil)
local items = json.decode("[10, 20, 30]")
assert(#items == 3 and items[1] == 10)
assert(math.type(items[1]) == "integer")
assert(math.type(json.decode("2.0")) == "integer")
assert(math.type(json.decode("2.5")) == "float")
local nested = json.decode('{"data":{"users":[{"id":1,"name":"Alice"}]}}')
assert(nested.data.users[1].name == "Alice")
assert(json.decode("null") == nil)

-- decode errors: empty/non-string INVALID, syntax INTERNAL
local v, e = json.decode("")
assert(v == nil and errors.is(e, errors.INVALID))
v, e = json.decode(123)
assert(v == nil and errors.is(e, errors.INVALID))
v, e = json.decode("not valid json")
assert(v == nil and errors.is(e, errors.INTERNAL))
assert(e:kind() == "Internal")

-- round trip
local msg = {type = "ticker", data = {{symbol = "BTC-USD", price = 42000.5, timestamp = 1700000000}}}
local back = json.decode(json.encode(msg))
assert(back.type == "ticker" and back.data[1].price == 42000.5 and back.data[1].timestamp == 1700000000)

return "ok"
