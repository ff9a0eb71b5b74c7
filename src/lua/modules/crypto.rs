//! The `crypto` module (§6.5): random values, HMAC, HS* JWTs, PBKDF2, constant-time compare,
//! plus hashing and base64/hex helpers. AES-GCM and ChaCha20-Poly1305 need crates the project
//! does not carry, so `encrypt.*`/`decrypt.*` answer `nil, INVALID "not supported"`.

use crate::lua::errors::{fail, ok};
use crate::lua::modules::json;
use crate::process::value::ErrorKind;
use crate::security::digest::{constant_time_eq, hex_decode, hex_encode};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use mlua::{Lua, MultiValue, Table, Value};
use rand::Rng;
use sha2::{Digest, Sha256, Sha384, Sha512};

const MAX_RANDOM: i64 = 1_048_576;
const MAX_PBKDF2_ITERS: i64 = 10_000_000;
/// Bounds PBKDF2 output so one call cannot allocate without limit.
const MAX_PBKDF2_LEN: i64 = 1_048_576;
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

type LuaRet = mlua::Result<(Value, Value)>;

pub fn loader(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;

    let random = lua.create_table()?;
    random.set("bytes", lua.create_function(random_bytes)?)?;
    random.set("string", lua.create_function(random_string)?)?;
    random.set("uuid", lua.create_function(|lua, ()| ok(lua, uuid_v4()))?)?;
    t.set("random", random)?;

    let hmac = lua.create_table()?;
    hmac.set(
        "sha256",
        lua.create_function(|lua, args: MultiValue| hmac_fn::<Hmac<Sha256>>(lua, args, "sha256"))?,
    )?;
    hmac.set(
        "sha512",
        lua.create_function(|lua, args: MultiValue| hmac_fn::<Hmac<Sha512>>(lua, args, "sha512"))?,
    )?;
    t.set("hmac", hmac)?;

    for table_name in ["encrypt", "decrypt"] {
        let sub = lua.create_table()?;
        for cipher in ["aes", "chacha20"] {
            sub.set(
                cipher,
                lua.create_function(move |lua, _: MultiValue| {
                    fail(
                        lua,
                        ErrorKind::Invalid,
                        format!("crypto.{table_name}.{cipher} is not supported by this runtime"),
                    )
                })?,
            )?;
        }
        t.set(table_name, sub)?;
    }

    let jwt = lua.create_table()?;
    jwt.set("encode", lua.create_function(jwt_encode)?)?;
    jwt.set("verify", lua.create_function(jwt_verify)?)?;
    t.set("jwt", jwt)?;

    t.set("pbkdf2", lua.create_function(pbkdf2_fn)?)?;
    t.set(
        "constant_time_compare",
        lua.create_function(|_, args: MultiValue| {
            let a = bytes_arg(&args, 0, "constant_time_compare")?;
            let b = bytes_arg(&args, 1, "constant_time_compare")?;
            Ok(constant_time_eq(&a, &b))
        })?,
    )?;

    // Extras beyond §6.5: digests and encodings scripts otherwise hand-roll in Lua.
    t.set(
        "sha256",
        lua.create_function(|lua, args: MultiValue| {
            ok(
                lua,
                hex_encode(&Sha256::digest(bytes_arg(&args, 0, "sha256")?)),
            )
        })?,
    )?;
    t.set(
        "sha512",
        lua.create_function(|lua, args: MultiValue| {
            ok(
                lua,
                hex_encode(&Sha512::digest(bytes_arg(&args, 0, "sha512")?)),
            )
        })?,
    )?;
    let b64 = lua.create_table()?;
    b64.set(
        "encode",
        lua.create_function(|lua, args: MultiValue| {
            ok(lua, STANDARD.encode(bytes_arg(&args, 0, "base64.encode")?))
        })?,
    )?;
    b64.set(
        "decode",
        lua.create_function(|lua, args: MultiValue| {
            match STANDARD.decode(bytes_arg(&args, 0, "base64.decode")?) {
                Ok(b) => ok(lua, lua.create_string(b)?),
                Err(e) => fail(lua, ErrorKind::Invalid, format!("invalid base64: {e}")),
            }
        })?,
    )?;
    t.set("base64", b64)?;
    let hex = lua.create_table()?;
    hex.set(
        "encode",
        lua.create_function(|lua, args: MultiValue| {
            ok(lua, hex_encode(&bytes_arg(&args, 0, "hex.encode")?))
        })?,
    )?;
    hex.set(
        "decode",
        lua.create_function(|lua, args: MultiValue| {
            match hex_decode(&bytes_arg(&args, 0, "hex.decode")?) {
                Some(b) => ok(lua, lua.create_string(b)?),
                None => fail(lua, ErrorKind::Invalid, "invalid hex string"),
            }
        })?,
    )?;
    t.set("hex", hex)?;
    Ok(t)
}

// ---- argument helpers -------------------------------------------------------------------

fn bad_arg(i: usize, fname: &str, expected: &str, got: &Value) -> mlua::Error {
    mlua::Error::runtime(format!(
        "bad argument #{} to '{fname}' ({expected} expected, got {})",
        i + 1,
        got.type_name()
    ))
}

/// A binary-safe string argument; numbers are accepted the way Lua's string coercion would.
fn bytes_arg(args: &MultiValue, i: usize, fname: &str) -> mlua::Result<Vec<u8>> {
    match args.get(i).unwrap_or(&Value::Nil) {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(n) => Ok(n.to_string().into_bytes()),
        Value::Number(n) => Ok(n.to_string().into_bytes()),
        other => Err(bad_arg(i, fname, "string", other)),
    }
}

fn opt_bytes_arg(args: &MultiValue, i: usize, fname: &str) -> mlua::Result<Option<Vec<u8>>> {
    match args.get(i) {
        None | Some(Value::Nil) => Ok(None),
        Some(_) => bytes_arg(args, i, fname).map(Some),
    }
}

fn int_arg(args: &MultiValue, i: usize, fname: &str) -> mlua::Result<i64> {
    match args.get(i).unwrap_or(&Value::Nil) {
        Value::Integer(n) => Ok(*n),
        Value::Number(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(*f as i64),
        other => Err(bad_arg(i, fname, "integer", other)),
    }
}

fn opt_str_arg(args: &MultiValue, i: usize, fname: &str) -> mlua::Result<Option<String>> {
    match args.get(i) {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.to_string_lossy())),
        Some(other) => Err(bad_arg(i, fname, "string", other)),
    }
}

// ---- random -----------------------------------------------------------------------------

fn length_ok(n: i64) -> bool {
    (1..=MAX_RANDOM).contains(&n)
}

fn random_bytes(lua: &Lua, args: MultiValue) -> LuaRet {
    let n = int_arg(&args, 0, "random.bytes")?;
    if !length_ok(n) {
        return fail(
            lua,
            ErrorKind::Invalid,
            format!("length must be between 1 and {MAX_RANDOM}"),
        );
    }
    let mut buf = vec![0u8; n as usize];
    rand::thread_rng().fill(&mut buf[..]);
    ok(lua, lua.create_string(buf)?)
}

fn random_string(lua: &Lua, args: MultiValue) -> LuaRet {
    let n = int_arg(&args, 0, "random.string")?;
    let charset = opt_bytes_arg(&args, 1, "random.string")?;
    if !length_ok(n) {
        return fail(
            lua,
            ErrorKind::Invalid,
            format!("length must be between 1 and {MAX_RANDOM}"),
        );
    }
    let charset = charset.as_deref().unwrap_or(ALNUM);
    if charset.is_empty() {
        return fail(lua, ErrorKind::Invalid, "charset must not be empty");
    }
    // Byte alphabet as in Wippy, but `gen_range` keeps the choice unbiased for any size.
    let mut rng = rand::thread_rng();
    let out: Vec<u8> = (0..n)
        .map(|_| charset[rng.gen_range(0..charset.len())])
        .collect();
    ok(lua, lua.create_string(out)?)
}

fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex_encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

// ---- hmac / hashing ---------------------------------------------------------------------

fn hmac_bytes<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hmac_fn<M: Mac + hmac::digest::KeyInit>(lua: &Lua, args: MultiValue, name: &str) -> LuaRet {
    let fname = format!("hmac.{name}");
    let key = bytes_arg(&args, 0, &fname)?;
    let data = bytes_arg(&args, 1, &fname)?;
    if key.is_empty() {
        return fail(lua, ErrorKind::Invalid, "HMAC key must not be empty");
    }
    ok(lua, hex_encode(&hmac_bytes::<M>(&key, &data)))
}

// ---- pbkdf2 -----------------------------------------------------------------------------

fn pbkdf2_fn(lua: &Lua, args: MultiValue) -> LuaRet {
    let pw = bytes_arg(&args, 0, "pbkdf2")?;
    let salt = bytes_arg(&args, 1, "pbkdf2")?;
    let iters = int_arg(&args, 2, "pbkdf2")?;
    let len = int_arg(&args, 3, "pbkdf2")?;
    let hash = opt_str_arg(&args, 4, "pbkdf2")?;
    if !(1..=MAX_PBKDF2_ITERS).contains(&iters) {
        return fail(
            lua,
            ErrorKind::Invalid,
            format!("iterations must be between 1 and {MAX_PBKDF2_ITERS}"),
        );
    }
    if !(1..=MAX_PBKDF2_LEN).contains(&len) {
        return fail(
            lua,
            ErrorKind::Invalid,
            format!("key length must be between 1 and {MAX_PBKDF2_LEN}"),
        );
    }
    let out = match hash
        .as_deref()
        .unwrap_or("sha256")
        .to_ascii_lowercase()
        .as_str()
    {
        "sha256" => pbkdf2::<Hmac<Sha256>>(&pw, &salt, iters as u32, len as usize),
        "sha512" => pbkdf2::<Hmac<Sha512>>(&pw, &salt, iters as u32, len as usize),
        other => {
            return fail(
                lua,
                ErrorKind::Invalid,
                format!("unsupported hash {other:?} (sha256, sha512)"),
            )
        }
    };
    ok(lua, lua.create_string(out)?)
}

/// RFC 8018 PBKDF2; the keyed MAC is cloned per round so the key schedule is computed once.
fn pbkdf2<M: Mac + hmac::digest::KeyInit + Clone>(
    pw: &[u8],
    salt: &[u8],
    iters: u32,
    len: usize,
) -> Vec<u8> {
    let base =
        <M as hmac::digest::KeyInit>::new_from_slice(pw).expect("HMAC accepts any key length");
    let mut out = Vec::with_capacity(len);
    let mut block: u32 = 1;
    while out.len() < len {
        let mut mac = base.clone();
        mac.update(salt);
        mac.update(&block.to_be_bytes());
        let mut u = mac.finalize().into_bytes();
        let mut t = u.clone();
        for _ in 1..iters {
            let mut mac = base.clone();
            mac.update(&u);
            u = mac.finalize().into_bytes();
            for (a, b) in t.iter_mut().zip(u.iter()) {
                *a ^= b;
            }
        }
        let take = (len - out.len()).min(t.len());
        out.extend_from_slice(&t[..take]);
        block += 1;
    }
    out
}

// ---- jwt --------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum JwtAlg {
    Hs256,
    Hs384,
    Hs512,
}

impl JwtAlg {
    fn name(self) -> &'static str {
        match self {
            JwtAlg::Hs256 => "HS256",
            JwtAlg::Hs384 => "HS384",
            JwtAlg::Hs512 => "HS512",
        }
    }

    fn sign(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            JwtAlg::Hs256 => hmac_bytes::<Hmac<Sha256>>(key, data),
            JwtAlg::Hs384 => hmac_bytes::<Hmac<Sha384>>(key, data),
            JwtAlg::Hs512 => hmac_bytes::<Hmac<Sha512>>(key, data),
        }
    }
}

fn jwt_alg(name: Option<&str>) -> Result<JwtAlg, String> {
    match name.map(str::to_ascii_uppercase).as_deref() {
        None | Some("HS256") => Ok(JwtAlg::Hs256),
        Some("HS384") => Ok(JwtAlg::Hs384),
        Some("HS512") => Ok(JwtAlg::Hs512),
        Some(rs) if rs.starts_with("RS") || rs.starts_with("ES") || rs.starts_with("PS") => {
            Err(format!("JWT algorithm {rs} is unsupported by this runtime"))
        }
        Some(other) => Err(format!("unknown JWT algorithm {other:?}")),
    }
}

/// Encodes a string-keyed table as a JSON object, sorted; `skip` names keys left out.
fn json_object(t: &Table, skip: &str) -> Result<Vec<(String, String)>, String> {
    let mut members = Vec::new();
    let mut err = None;
    t.for_each(|k: Value, v: Value| {
        match &k {
            Value::String(s) => {
                let key = s.to_string_lossy();
                if key != skip {
                    match json::encode_value(&v) {
                        Ok(j) => members.push((key, j)),
                        Err(e) => err = Some(format!("claim {key:?}: {e}")),
                    }
                }
            }
            other => {
                err = Some(format!(
                    "claims must have string keys, got {}",
                    other.type_name()
                ))
            }
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = err {
        return Err(e);
    }
    members.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(members)
}

fn object_text(members: &[(String, String)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        json::write_json_string(&mut s, k);
        s.push(':');
        s.push_str(v);
    }
    s.push('}');
    s
}

fn jwt_encode(lua: &Lua, args: MultiValue) -> LuaRet {
    let claims = match args.front().unwrap_or(&Value::Nil) {
        Value::Table(t) => t.clone(),
        other => return Err(bad_arg(0, "jwt.encode", "table", other)),
    };
    let key = bytes_arg(&args, 1, "jwt.encode")?;
    let alg_name = opt_str_arg(&args, 2, "jwt.encode")?;
    if key.is_empty() {
        return fail(lua, ErrorKind::Invalid, "JWT key must not be empty");
    }
    let alg = match jwt_alg(alg_name.as_deref()) {
        Ok(a) => a,
        Err(e) => return fail(lua, ErrorKind::Invalid, e),
    };
    let payload = match json_object(&claims, "_header") {
        Ok(m) => object_text(&m),
        Err(e) => return fail(lua, ErrorKind::Invalid, e),
    };
    // `_header` adds header members; `alg` always reflects the key actually used to sign.
    let mut header = vec![
        ("alg".to_string(), format!("\"{}\"", alg.name())),
        ("typ".to_string(), "\"JWT\"".into()),
    ];
    if let Value::Table(h) = claims.raw_get::<Value>("_header")? {
        match json_object(&h, "alg") {
            Ok(extra) => {
                for (k, v) in extra {
                    match header.iter_mut().find(|(hk, _)| *hk == k) {
                        Some(slot) => slot.1 = v,
                        None => header.push((k, v)),
                    }
                }
            }
            Err(e) => return fail(lua, ErrorKind::Invalid, format!("_header: {e}")),
        }
    }
    header.sort_by(|a, b| a.0.cmp(&b.0));
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(object_text(&header)),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = alg.sign(&key, signing_input.as_bytes());
    ok(
        lua,
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)),
    )
}

fn jwt_verify(lua: &Lua, args: MultiValue) -> LuaRet {
    let token = bytes_arg(&args, 0, "jwt.verify")?;
    let key = bytes_arg(&args, 1, "jwt.verify")?;
    let alg_name = opt_str_arg(&args, 2, "jwt.verify")?;
    let require_exp = match args.get(3) {
        None | Some(Value::Nil) => true,
        Some(Value::Boolean(b)) => *b,
        Some(other) => return Err(bad_arg(3, "jwt.verify", "boolean", other)),
    };
    if key.is_empty() {
        return fail(lua, ErrorKind::Invalid, "JWT key must not be empty");
    }
    let alg = match jwt_alg(alg_name.as_deref()) {
        Ok(a) => a,
        Err(e) => return fail(lua, ErrorKind::Invalid, e),
    };
    match verify_token(lua, &token, &key, alg, require_exp) {
        Ok(claims) => ok(lua, claims),
        Err(e) => fail(lua, ErrorKind::Internal, e),
    }
}

fn verify_token(
    lua: &Lua,
    token: &[u8],
    key: &[u8],
    alg: JwtAlg,
    require_exp: bool,
) -> Result<Value, String> {
    let malformed = || "token is malformed".to_string();
    let parts: Vec<&[u8]> = token.split(|&b| b == b'.').collect();
    if parts.len() != 3 {
        return Err(malformed());
    }
    let header = URL_SAFE_NO_PAD.decode(parts[0]).map_err(|_| malformed())?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|_| malformed())?;
    if header.get("alg").and_then(|a| a.as_str()) != Some(alg.name()) {
        return Err(format!(
            "token is unverifiable: signing method is not {}",
            alg.name()
        ));
    }
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).map_err(|_| malformed())?;
    let signed_len = parts[0].len() + 1 + parts[1].len();
    if !constant_time_eq(&alg.sign(key, &token[..signed_len]), &sig) {
        return Err("token signature is invalid".into());
    }
    let payload = URL_SAFE_NO_PAD.decode(parts[1]).map_err(|_| malformed())?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).map_err(|_| malformed())?;
    if !claims.is_object() {
        return Err(malformed());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    match claims.get("exp") {
        Some(exp) => match exp.as_f64() {
            Some(exp) if now <= exp => {}
            Some(_) => return Err("token has invalid claims: token is expired".into()),
            None => return Err("token has invalid claims: exp is not a number".into()),
        },
        None if require_exp => {
            return Err("token has invalid claims: token is missing required claim: exp".into())
        }
        None => {}
    }
    if let Some(nbf) = claims.get("nbf") {
        match nbf.as_f64() {
            Some(nbf) if now >= nbf => {}
            Some(_) => return Err("token has invalid claims: token is not valid yet".into()),
            None => return Err("token has invalid claims: nbf is not a number".into()),
        }
    }
    json::decode_value(lua, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lua::modules::json::testing::{run, run_script, state};

    #[test]
    fn pbkdf2_matches_rfc_7914_vectors() {
        // RFC 7914 §11 PBKDF2-HMAC-SHA256 vectors.
        assert_eq!(
            hex_encode(&pbkdf2::<Hmac<Sha256>>(b"passwd", b"salt", 1, 64)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
             49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
        );
        assert_eq!(
            hex_encode(&pbkdf2::<Hmac<Sha256>>(b"Password", b"NaCl", 80000, 16)),
            "4ddcd8f60b98be21830cee5ef22701f9"
        );
    }

    #[test]
    fn error_paths() {
        let lua = state();
        run(
            &lua,
            r#"
            local function inv(v, err) return v == nil and errors.is(err, errors.INVALID) end
            assert(inv(crypto.random.bytes(0)))
            assert(inv(crypto.random.bytes(1048577)))
            assert(inv(crypto.random.string(0)))
            assert(inv(crypto.random.string(5, "")))
            assert(not pcall(crypto.random.bytes, "x"))
            assert(not pcall(crypto.random.bytes, 1.5))
            assert(inv(crypto.hmac.sha256("", "data")))
            assert(inv(crypto.hmac.sha512("", "data")))
            assert(not pcall(crypto.hmac.sha256, {}, "data"))
            assert(inv(crypto.pbkdf2("pw", "salt", 0, 32)))
            assert(inv(crypto.pbkdf2("pw", "salt", 10000001, 32)))
            assert(inv(crypto.pbkdf2("pw", "salt", 1, 0)))
            assert(inv(crypto.pbkdf2("pw", "salt", 1, 32, "md5")))
            assert(inv(crypto.encrypt.aes("data", string.rep("k", 32))))
            assert(inv(crypto.decrypt.chacha20("data", string.rep("k", 32))))
            assert(inv(crypto.jwt.encode({sub = "x"}, "")))
            assert(inv(crypto.jwt.encode({sub = "x"}, "k", "RS256")))
            assert(inv(crypto.jwt.verify("a.b.c", "")))
            assert(inv(crypto.base64.decode("***")))
            assert(inv(crypto.hex.decode("abc")))
            assert(not pcall(crypto.jwt.encode, "claims", "k"))
            assert(not pcall(crypto.constant_time_compare, "a", nil))
            "#,
        );
    }

    #[test]
    fn jwt_verify_failures_are_internal() {
        let lua = state();
        run(
            &lua,
            r#"
            local function internal(v, err) return v == nil and errors.is(err, errors.INTERNAL) end
            local exp = os.time() + 60
            local tok = assert(crypto.jwt.encode({sub = "u1", exp = exp}, "secret"))
            assert(internal(crypto.jwt.verify(tok, "other")))
            assert(internal(crypto.jwt.verify(tok, "secret", "HS512")))
            assert(internal(crypto.jwt.verify("garbage", "secret")))
            assert(internal(crypto.jwt.verify(tok .. "x", "secret")))
            local old = crypto.jwt.encode({sub = "u1", exp = os.time() - 10}, "secret")
            assert(internal(crypto.jwt.verify(old, "secret")))
            local noexp = crypto.jwt.encode({sub = "u1"}, "secret")
            assert(internal(crypto.jwt.verify(noexp, "secret")))
            assert(crypto.jwt.verify(noexp, "secret", "HS256", false).sub == "u1")
            local later = crypto.jwt.encode({sub = "u1", nbf = os.time() + 100}, "secret")
            assert(internal(crypto.jwt.verify(later, "secret", nil, false)))
            "#,
        );
    }

    #[test]
    fn jwt_matches_a_known_token() {
        // The jwt.io HS256 sample: header {"alg":"HS256","typ":"JWT"}, key "your-256-bit-secret".
        let lua = state();
        run(
            &lua,
            r#"
            local tok = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
            local c, err = crypto.jwt.verify(tok, "your-256-bit-secret", "HS256", false)
            assert(err == nil, tostring(err))
            assert(c.sub == "1234567890" and c.name == "John Doe" and c.iat == 1516239022)
            "#,
        );
    }

    #[test]
    fn lua_script_passes() {
        let lua = state();
        run_script(
            &lua,
            "crypto_test.lua",
            include_str!("../../../tests/lua/crypto_test.lua"),
        );
    }
}
