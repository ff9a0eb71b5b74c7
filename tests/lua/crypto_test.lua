-- crypto module (§6.5): run by the runtime's Lua test harness; returns "ok" when every assert holds.
local crypto = require("crypto")

local function invalid(v, err)
    return v == nil and err ~= nil and errors.is(err, errors.INVALID)
end
local function internal(v, err)
    return v == nil and err ~= nil and errors.is(err, errors.INTERNAL)
end

-- random (the ticker tutorial reads two random bytes)
local bytes, err = crypto.random.bytes(2)
assert(err == nil and #bytes == 2)
local rand = (bytes:byte(1) * 256 + bytes:byte(2)) / 65535.0
assert(rand >= 0 and rand <= 1)
assert(invalid(crypto.random.bytes(0)))
assert(invalid(crypto.random.bytes(1048577)))

local key = crypto.random.string(32)
assert(#key == 32 and key:match("^[A-Za-z0-9]+$"))
local hexs = crypto.random.string(16, "0123456789abcdef")
assert(#hexs == 16 and hexs:match("^[0-9a-f]+$"))
assert(invalid(crypto.random.string(0)))
assert(crypto.random.string(32) ~= crypto.random.string(32))

local id = crypto.random.uuid()
assert(id:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"), id)

-- hmac (RFC 4231 case 2)
assert(crypto.hmac.sha256("Jefe", "what do ya want for nothing?")
    == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
assert(crypto.hmac.sha512("Jefe", "what do ya want for nothing?")
    == "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737")
assert(invalid(crypto.hmac.sha256("", "data")))

-- constant-time compare
assert(crypto.constant_time_compare("abc", "abc") == true)
assert(crypto.constant_time_compare("abc", "abd") == false)
assert(crypto.constant_time_compare("abc", "abcd") == false)

-- pbkdf2 (RFC 7914 vector), raw bytes
local dk = crypto.pbkdf2("passwd", "salt", 1, 64)
assert(#dk == 64)
assert(crypto.hex.encode(dk):sub(1, 16) == "55ac046e56e3089f")
assert(#crypto.pbkdf2("pw", "salt", 10, 32, "sha512") == 32)
assert(invalid(crypto.pbkdf2("pw", "salt", 10000001, 32)))
assert(invalid(crypto.pbkdf2("pw", "salt", 1, 32, "md5")))

-- jwt
local exp = os.time() + 3600
local token, terr = crypto.jwt.encode({sub = "user1", exp = exp, _header = {kid = "k1"}}, "secret")
assert(terr == nil and select(2, token:gsub("%.", "")) == 2)
local claims, verr = crypto.jwt.verify(token, "secret")
assert(verr == nil, tostring(verr))
assert(claims.sub == "user1" and claims.exp == exp and claims._header == nil)
assert(internal(crypto.jwt.verify(token, "wrong")))
assert(internal(crypto.jwt.verify(token, "secret", "HS384")))
local t512 = crypto.jwt.encode({sub = "x", exp = exp}, "secret", "HS512")
assert(crypto.jwt.verify(t512, "secret", "HS512").sub == "x")
local expired = crypto.jwt.encode({sub = "x", exp = os.time() - 60}, "secret")
assert(internal(crypto.jwt.verify(expired, "secret")))
local no_exp = crypto.jwt.encode({sub = "x"}, "secret")
assert(internal(crypto.jwt.verify(no_exp, "secret")))
assert(crypto.jwt.verify(no_exp, "secret", "HS256", false).sub == "x")
assert(invalid(crypto.jwt.encode({sub = "x"}, "")))
assert(invalid(crypto.jwt.encode({sub = "x"}, "pem", "RS256")))

-- not available in this runtime
assert(invalid(crypto.encrypt.aes("data", string.rep("k", 32))))
assert(invalid(crypto.decrypt.aes("data", string.rep("k", 32))))

-- extras
assert(crypto.sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
assert(crypto.base64.encode("hello") == "aGVsbG8=")
assert(crypto.base64.decode("aGVsbG8=") == "hello")
assert(crypto.hex.decode(crypto.hex.encode("\0\255")) == "\0\255")

return "ok"
