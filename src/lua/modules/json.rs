//! The `json` module (§6.2): a direct Lua ⇄ JSON codec, also the encoder other bindings reuse.
//!
//! Encoding walks Lua values straight into a `String` (no intermediate tree); decoding drives
//! serde_json's parser with a seed that builds Lua values as it goes.

use crate::lua::errors::{fail, ok, LuaError};
use crate::lua::modules::time::{LuaDuration, LuaTime};
use crate::process::value::ErrorKind;
use mlua::{Lua, Table, Value};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::ffi::c_void;
use std::fmt::Write as _;

/// Tables nested deeper than this are rejected (Wippy's limit; also bounds our recursion).
const MAX_DEPTH: usize = 128;

pub fn loader(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "encode",
        lua.create_function(|lua, v: Value| match encode_value(&v) {
            Ok(s) => ok(lua, s),
            Err(e) => fail(lua, ErrorKind::Internal, e),
        })?,
    )?;
    t.set(
        "decode",
        lua.create_function(|lua, v: Value| {
            let s = match &v {
                Value::String(s) if !s.as_bytes().is_empty() => s.clone(),
                Value::String(_) => {
                    return fail(lua, ErrorKind::Invalid, "json.decode: empty string")
                }
                other => {
                    return fail(
                        lua,
                        ErrorKind::Invalid,
                        format!("json.decode: expected a string, got {}", other.type_name()),
                    )
                }
            };
            match decode_value(lua, &s.as_bytes()) {
                Ok(v) => ok(lua, v),
                Err(e) => fail(lua, ErrorKind::Internal, e),
            }
        })?,
    )?;
    Ok(t)
}

/// Encodes a Lua value as compact JSON with the §6.2 rules; the error is a human-readable reason.
///
/// Object members are sorted by key so output is deterministic (as Go's encoder does for maps).
/// Error objects encode as their message, `time` Durations as nanoseconds, Times as RFC 3339.
pub fn encode_value(v: &Value) -> Result<String, String> {
    let mut out = String::with_capacity(64);
    let mut stack = Vec::new();
    encode_into(&mut out, v, &mut stack)?;
    Ok(out)
}

fn encode_into(out: &mut String, v: &Value, stack: &mut Vec<*const c_void>) -> Result<(), String> {
    match v {
        Value::Nil => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Number(n) => write_float(out, *n),
        Value::String(s) => write_json_string(out, &String::from_utf8_lossy(&s.as_bytes())),
        Value::Table(t) => encode_table(out, t, stack)?,
        // mlua's `Value::NULL` sentinel: lets Rust callers put an explicit null into a table.
        Value::LightUserData(p) if p.0.is_null() => out.push_str("null"),
        Value::UserData(ud) => {
            if let Ok(e) = ud.borrow::<LuaError>() {
                write_json_string(out, &e.0.message);
            } else if let Ok(d) = ud.borrow::<LuaDuration>() {
                let _ = write!(out, "{}", d.0);
            } else if let Ok(t) = ud.borrow::<LuaTime>() {
                write_json_string(out, &t.format_rfc3339_nano());
            } else {
                return Err("cannot encode userdata to JSON".into());
            }
        }
        other => return Err(format!("cannot encode {} to JSON", other.type_name())),
    }
    Ok(())
}

fn encode_table(out: &mut String, t: &Table, stack: &mut Vec<*const c_void>) -> Result<(), String> {
    let ptr = t.to_pointer();
    if stack.contains(&ptr) {
        return Err("cannot encode recursive table".into());
    }
    if stack.len() >= MAX_DEPTH {
        return Err(format!(
            "cannot encode table nested deeper than {MAX_DEPTH} levels"
        ));
    }
    let mut entries: Vec<(Value, Value)> = Vec::new();
    t.for_each(|k: Value, v: Value| {
        entries.push((k, v));
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    if entries.is_empty() {
        out.push_str("[]");
        return Ok(());
    }

    let (mut ints, mut strs, mut max) = (0usize, 0usize, 0i64);
    for (k, _) in &entries {
        match k {
            Value::Integer(i) if *i >= 1 => {
                ints += 1;
                max = max.max(*i);
            }
            Value::Integer(_) => return Err("cannot encode sparse array (index below 1)".into()),
            Value::String(_) => strs += 1,
            other => {
                return Err(format!(
                    "cannot encode table with {} keys",
                    other.type_name()
                ))
            }
        }
    }
    if ints > 0 && strs > 0 {
        return Err("cannot encode table with mixed key types".into());
    }

    stack.push(ptr);
    if ints > 0 {
        if max as u64 != ints as u64 {
            stack.pop();
            return Err("cannot encode sparse array".into());
        }
        let mut slots = vec![Value::Nil; ints];
        for (k, v) in entries {
            if let Value::Integer(i) = k {
                slots[(i - 1) as usize] = v;
            }
        }
        out.push('[');
        for (n, v) in slots.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            encode_into(out, v, stack)?;
        }
        out.push(']');
    } else {
        let mut keyed: Vec<(String, Value)> = entries
            .into_iter()
            .map(|(k, v)| match k {
                Value::String(s) => (String::from_utf8_lossy(&s.as_bytes()).into_owned(), v),
                _ => unreachable!("all keys checked to be strings"),
            })
            .collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.push('{');
        for (n, (k, v)) in keyed.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            write_json_string(out, k);
            out.push(':');
            encode_into(out, v, stack)?;
        }
        out.push('}');
    }
    stack.pop();
    Ok(())
}

/// Go's float formatting: shortest round-trip digits, exponent only for very large/small
/// magnitudes, integral values without a fraction (`42000`, not `42000.0`); NaN/Inf → `null`.
pub(crate) fn write_float(out: &mut String, f: f64) {
    if !f.is_finite() {
        out.push_str("null");
        return;
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let _ = write!(out, "{f:e}");
    } else {
        let _ = write!(out, "{f}");
    }
}

/// Writes `s` as a JSON string literal (quotes included).
pub(crate) fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is an ASCII position, hence a char boundary.
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Parses JSON text into a Lua value with the §6.2 rules (null → nil, integral numbers →
/// integers, arrays 1-based). The error is serde_json's message (syntax, depth > 128 …).
pub fn decode_value(lua: &Lua, input: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(input);
    let v = LuaSeed(lua)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

struct LuaSeed<'a>(&'a Lua);

impl<'de> DeserializeSeed<'de> for LuaSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LuaSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Boolean(b))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Integer(i))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        Ok(match i64::try_from(u) {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::Number(u as f64),
        })
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        // `1.0` and `1e3` are integral: scripts index and compare them as integers.
        let in_range = (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f);
        Ok(if f.fract() == 0.0 && in_range {
            Value::Integer(f as i64)
        } else {
            Value::Number(f)
        })
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.0
            .create_string(s)
            .map(Value::String)
            .map_err(E::custom)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let t = self.0.create_table().map_err(de::Error::custom)?;
        let mut i: i64 = 1;
        while let Some(v) = seq.next_element_seed(LuaSeed(self.0))? {
            if !v.is_nil() {
                t.raw_set(i, v).map_err(de::Error::custom)?;
            }
            i += 1;
        }
        Ok(Value::Table(t))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let t = self.0.create_table().map_err(de::Error::custom)?;
        while let Some(k) = map.next_key_seed(LuaSeed(self.0))? {
            let v = map.next_value_seed(LuaSeed(self.0))?;
            if !v.is_nil() {
                t.raw_set(k, v).map_err(de::Error::custom)?;
            }
        }
        Ok(Value::Table(t))
    }
}

/// Test harness shared by the module tests: a full Lua state with the `errors` global and a
/// `require` that hands out this crate's json/crypto/logger/time tables.
#[cfg(test)]
pub(crate) mod testing {
    use mlua::Lua;

    pub fn state() -> Lua {
        let lua = Lua::new();
        let globals = lua.globals();
        crate::lua::errors::register(&lua, &globals).unwrap();
        let mods = lua.create_table().unwrap();
        mods.set("json", super::loader(&lua).unwrap()).unwrap();
        mods.set("crypto", crate::lua::modules::crypto::loader(&lua).unwrap())
            .unwrap();
        mods.set("logger", crate::lua::modules::logger::loader(&lua).unwrap())
            .unwrap();
        mods.set("time", crate::lua::modules::time::loader(&lua).unwrap())
            .unwrap();
        for name in ["json", "crypto", "logger", "time"] {
            let m: mlua::Table = mods.get(name).unwrap();
            globals.set(name, m).unwrap();
        }
        globals.set("__modules", mods).unwrap();
        lua.load(
            r#"function require(name)
                 local m = __modules[name]
                 if m == nil then error("module not available: " .. tostring(name)) end
                 return m
               end"#,
        )
        .exec()
        .unwrap();
        lua
    }

    /// Runs a chunk, panicking with the Lua error (and its traceback) on failure.
    pub fn run(lua: &Lua, code: &str) {
        if let Err(e) = lua.load(code).exec() {
            panic!("lua failed: {e}");
        }
    }

    /// Runs a tests/lua script; it must return "ok".
    pub fn run_script(lua: &Lua, name: &str, code: &str) {
        match lua.load(code).set_name(name).eval::<String>() {
            Ok(s) => assert_eq!(s, "ok", "{name} returned {s:?}"),
            Err(e) => panic!("{name} failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{run, run_script, state};
    use super::*;

    fn enc(lua: &Lua, code: &str) -> Result<String, String> {
        let v: Value = lua.load(code).eval().unwrap();
        encode_value(&v)
    }

    #[test]
    fn encodes_scalars_and_containers() {
        let lua = Lua::new();
        assert_eq!(enc(&lua, "nil").unwrap(), "null");
        assert_eq!(enc(&lua, "true").unwrap(), "true");
        assert_eq!(enc(&lua, "42").unwrap(), "42");
        assert_eq!(enc(&lua, "42000.0").unwrap(), "42000");
        assert_eq!(enc(&lua, "1.5").unwrap(), "1.5");
        assert_eq!(enc(&lua, "0/0").unwrap(), "null");
        assert_eq!(enc(&lua, "math.huge").unwrap(), "null");
        assert_eq!(enc(&lua, "1e300").unwrap(), "1e300");
        assert_eq!(enc(&lua, "{}").unwrap(), "[]");
        assert_eq!(enc(&lua, "{1, 'a', true}").unwrap(), r#"[1,"a",true]"#);
        assert_eq!(
            enc(&lua, "{b = 1, a = {x = {}}}").unwrap(),
            r#"{"a":{"x":[]},"b":1}"#
        );
        assert_eq!(enc(&lua, r#""q\"\\\n\1é""#).unwrap(), r#""q\"\\\n\u0001é""#);
        assert_eq!(enc(&lua, r#""\255""#).unwrap(), "\"\u{fffd}\"");
    }

    #[test]
    fn rejects_unencodable_tables() {
        let lua = Lua::new();
        assert!(enc(&lua, "{1, 2, x = 3}").unwrap_err().contains("mixed"));
        assert!(enc(&lua, "{[1] = 1, [3] = 3}")
            .unwrap_err()
            .contains("sparse"));
        assert!(enc(&lua, "{[0] = 1}").unwrap_err().contains("sparse"));
        assert!(enc(&lua, "{[1.5] = 1}").is_err());
        assert!(enc(&lua, "{[true] = 1}").is_err());
        assert!(enc(&lua, "local t = {}; t.self = t; return t")
            .unwrap_err()
            .contains("recursive"));
        assert!(enc(&lua, "{f = print}").unwrap_err().contains("function"));
        let deep = |n: usize| format!("local t = {{}}; for i = 2, {n} do t = {{t}} end; return t");
        assert!(enc(&lua, &deep(128)).is_ok());
        assert!(enc(&lua, &deep(129)).unwrap_err().contains("128"));
    }

    #[test]
    fn shared_subtable_is_not_a_cycle() {
        let lua = Lua::new();
        assert_eq!(
            enc(&lua, "local s = {1}; return {s, s}").unwrap(),
            "[[1],[1]]"
        );
    }

    #[test]
    fn decode_builds_lua_values() {
        let lua = state();
        run(
            &lua,
            r#"
            local v, err = json.decode('{"a":[1,2.5,"x",null,true],"n":null,"f":2.0,"big":1e300}')
            assert(err == nil)
            assert(math.type(v.a[1]) == "integer" and v.a[2] == 2.5 and v.a[3] == "x")
            assert(v.a[4] == nil and v.a[5] == true)
            assert(v.n == nil and math.type(v.f) == "integer" and v.f == 2)
            assert(math.type(v.big) == "float")
            local u = json.decode('18446744073709551615')
            assert(math.type(u) == "float")
            "#,
        );
    }

    #[test]
    fn decode_error_kinds() {
        let lua = state();
        run(
            &lua,
            r#"
            local v, err = json.decode("")
            assert(v == nil and errors.is(err, errors.INVALID))
            v, err = json.decode(42)
            assert(v == nil and errors.is(err, errors.INVALID))
            v, err = json.decode()
            assert(v == nil and errors.is(err, errors.INVALID))
            v, err = json.decode("{bad")
            assert(v == nil and errors.is(err, errors.INTERNAL), tostring(err))
            v, err = json.decode("[1] x")
            assert(v == nil and errors.is(err, errors.INTERNAL))
            v, err = json.decode(string.rep("[", 200) .. string.rep("]", 200))
            assert(v == nil and errors.is(err, errors.INTERNAL))
            -- serde_json's fixed recursion limit: 127 levels decode, 128 do not.
            assert(json.decode(string.rep("[", 127) .. string.rep("]", 127)))
            v, err = json.decode(string.rep("[", 128) .. string.rep("]", 128))
            assert(v == nil and errors.is(err, errors.INTERNAL))
            local s, e2 = json.encode({1, nil, 3})
            assert(s == nil and errors.is(e2, errors.INTERNAL))
            "#,
        );
    }

    #[test]
    fn encodes_error_objects_as_messages() {
        let lua = state();
        run(
            &lua,
            r#"assert(json.encode({e = errors.new("boom")}) == '{"e":"boom"}')"#,
        );
    }

    #[test]
    fn lua_script_passes() {
        let lua = state();
        run_script(
            &lua,
            "json_test.lua",
            include_str!("../../../tests/lua/json_test.lua"),
        );
    }
}
