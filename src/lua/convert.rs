//! Deep copy between Lua values and owned `Value`s (§2.4): the only way data leaves a process.

use crate::lua::errors::{as_error_value, LuaError};
use crate::process::value::{ErrorKind, ErrorValue, Table, Value};
use bytes::Bytes;
use mlua::Lua;
use std::sync::Arc;

pub(crate) const MAX_DEPTH: usize = 128;

/// Strings at least this long are shared: the last one copied out of Lua is reused when the
/// same string is sent again (a broadcast copies it once), and the last one made into a Lua
/// string is reused by the next receiver on the worker. Shorter strings are cheaper to copy.
pub(crate) const SHARE_MIN: usize = 64;

thread_local! {
    /// (address of the Lua string, its bytes). The address only picks the candidate; the
    /// content is compared too, since a collected string's address can be reused.
    static LAST_SENT: std::cell::RefCell<Option<(usize, Bytes)>> = const { std::cell::RefCell::new(None) };
}

/// A record-like table (no sequence part, at most this many string/number/boolean keys and
/// values) is remembered after it is copied, and the next table with equal content that
/// `raw_copy.rs` reads shares the copy (`raw_copy::holds_exactly`; the general copy below, for
/// unusual values, does not look).
///
/// Why: a fan-out loop such as the tutorial's ticker (`process.send(pid, "ws.send", {type =
/// "text", data = data})` for every client) builds an equal small table for each send. Checking
/// it against the last copy walks its few entries; copying it again costs five allocations,
/// later freed on the receivers' core.
const RECORD_MAX: usize = 4;

thread_local! {
    static LAST_RECORD: std::cell::RefCell<Option<Arc<Table>>> = const { std::cell::RefCell::new(None) };
}

fn is_scalar(v: &Value) -> bool {
    matches!(
        v,
        Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_)
    )
}

/// `table` as a shared copy, remembered when it is a record (`raw_copy.rs` has already found
/// it unequal to the remembered one).
pub fn remember_copy(table: Table) -> Arc<Table> {
    let table = Arc::new(table);
    remember_record(&table);
    table
}

/// The remembered record (see `RECORD_MAX`) when `matches` accepts it.
pub(crate) fn last_record_if(matches: impl FnOnce(&Table) -> bool) -> Option<Arc<Table>> {
    LAST_RECORD.with(|last| last.borrow().as_ref().filter(|r| matches(r)).cloned())
}

fn remember_record(table: &Arc<Table>) {
    if table.array.is_empty()
        && !table.map.is_empty()
        && table.map.len() <= RECORD_MAX
        && table.map.iter().all(|(k, v)| is_scalar(k) && is_scalar(v))
    {
        LAST_RECORD.with(|last| *last.borrow_mut() = Some(table.clone()));
    }
}

/// Per Lua state (app data): the `Bytes` last turned into a Lua string, and that string.
/// Holding the `Bytes` keeps its buffer alive, so a pointer match means the same bytes.
struct LastReceived(Bytes, mlua::String);

/// A Lua string's bytes as an owned `Bytes` (copy-once for a repeated long string).
fn string_bytes(s: &mlua::String) -> Bytes {
    string_bytes_at(&s.as_bytes(), s.to_pointer() as usize)
}

/// The bytes of the Lua string at `addr` (its `lua_topointer`) as an owned `Bytes`; the same
/// long string sent again shares the copy made the first time.
pub fn string_bytes_at(b: &[u8], addr: usize) -> Bytes {
    if b.len() < SHARE_MIN {
        return Bytes::copy_from_slice(b);
    }
    LAST_SENT.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((a, bytes)) = c.as_ref() {
            if *a == addr && bytes[..] == b[..] {
                return bytes.clone();
            }
        }
        let bytes = Bytes::copy_from_slice(b);
        *c = Some((addr, bytes.clone()));
        bytes
    })
}

/// `Bytes` as a Lua string; the same long buffer delivered to many processes of a worker
/// becomes one Lua string (strings are immutable values, so sharing one is invisible).
fn lua_string(lua: &Lua, b: &Bytes) -> mlua::Result<mlua::String> {
    if b.len() < SHARE_MIN {
        return lua.create_string(b);
    }
    if let Some(last) = lua.app_data_ref::<LastReceived>() {
        if last.0.as_ptr() == b.as_ptr() && last.0.len() == b.len() {
            return Ok(last.1.clone());
        }
    }
    let s = lua.create_string(b)?;
    lua.set_app_data(LastReceived(b.clone(), s.clone()));
    Ok(s)
}

/// `from_lua`, with tables of the common shapes read straight off the Lua stack
/// (`raw_copy.rs`); the same copy, several times cheaper.
pub fn from_lua_in(lua: &Lua, v: &mlua::Value) -> Result<Value, ErrorValue> {
    if let mlua::Value::Table(_) = v {
        if let Some(copied) = crate::lua::raw_copy::from_lua(lua, v) {
            return Ok(copied);
        }
    }
    from_lua(v)
}

/// Lua → owned. Functions, threads, channels and other userdata are `INVALID`, as are cycles.
pub fn from_lua(v: &mlua::Value) -> Result<Value, ErrorValue> {
    let mut stack = Vec::new();
    copy_in(v, &mut stack)
}

fn copy_in(v: &mlua::Value, stack: &mut Vec<*const std::ffi::c_void>) -> Result<Value, ErrorValue> {
    Ok(match v {
        mlua::Value::Nil => Value::Nil,
        mlua::Value::Boolean(b) => Value::Bool(*b),
        mlua::Value::Integer(i) => Value::Int(*i),
        mlua::Value::Number(n) => Value::Float(*n),
        mlua::Value::String(s) => Value::Str(string_bytes(s)),
        mlua::Value::Table(t) => {
            let ptr = t.to_pointer();
            if stack.contains(&ptr) {
                return Err(ErrorValue::new(
                    ErrorKind::Invalid,
                    "cannot copy a table with cycles",
                ));
            }
            if stack.len() >= MAX_DEPTH {
                return Err(ErrorValue::new(
                    ErrorKind::Invalid,
                    "table nested too deeply",
                ));
            }
            stack.push(ptr);
            let len = t.raw_len();
            let mut array = Vec::with_capacity(len);
            for i in 1..=len {
                let item: mlua::Value = t.raw_get(i).map_err(internal)?;
                array.push(copy_in(&item, stack)?);
            }
            let mut map = Vec::new();
            for pair in t.pairs::<mlua::Value, mlua::Value>() {
                let (k, val) = pair.map_err(internal)?;
                if let mlua::Value::Integer(i) = k {
                    if i >= 1 && (i as usize) <= len {
                        continue;
                    }
                }
                map.push((copy_in(&k, stack)?, copy_in(&val, stack)?));
            }
            stack.pop();
            let table = Arc::new(Table { array, map });
            remember_record(&table);
            Value::Table(table)
        }
        mlua::Value::UserData(_) => match as_error_value(v) {
            Some(e) => Value::Error(e),
            None => return Err(invalid_type("userdata")),
        },
        mlua::Value::Function(_) => return Err(invalid_type("function")),
        mlua::Value::Thread(_) => return Err(invalid_type("thread")),
        other => return Err(invalid_type(other.type_name())),
    })
}

fn invalid_type(name: &str) -> ErrorValue {
    ErrorValue::new(
        ErrorKind::Invalid,
        format!("cannot send a {name} to another process"),
    )
}

fn internal(e: mlua::Error) -> ErrorValue {
    ErrorValue::new(ErrorKind::Internal, e.to_string())
}

/// Owned → Lua (a fresh copy every time).
pub fn to_lua(lua: &Lua, v: &Value) -> mlua::Result<mlua::Value> {
    Ok(match v {
        Value::Nil => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Int(i) => mlua::Value::Integer(*i),
        Value::Float(f) => mlua::Value::Number(*f),
        Value::Str(b) => mlua::Value::String(lua_string(lua, b)?),
        Value::Table(t) => {
            let table = lua.create_table_with_capacity(t.array.len(), t.map.len())?;
            for (i, item) in t.array.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            for (k, item) in &t.map {
                table.raw_set(to_lua(lua, k)?, to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
        Value::Error(e) => mlua::Value::UserData(lua.create_userdata(LuaError(e.clone()))?),
    })
}

/// JSON (serde) → Lua, used by registry `input` and JSON-shaped data.
pub fn json_to_lua(lua: &Lua, j: &serde_json::Value) -> mlua::Result<mlua::Value> {
    to_lua(lua, &Value::from_json(j))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_preserves_shape_and_numbers() {
        let lua = Lua::new();
        let v: mlua::Value = lua
            .load(r#"return {1, 2.5, "x", nested = {a = true}, [10] = "sparse"}"#)
            .eval()
            .unwrap();
        let owned = from_lua(&v).unwrap();
        let back = to_lua(&lua, &owned).unwrap();
        let t = back.as_table().unwrap();
        assert_eq!(t.get::<mlua::Value>(1).unwrap(), mlua::Value::Integer(1));
        assert_eq!(t.get::<f64>(2).unwrap(), 2.5);
        assert_eq!(t.get::<String>(10).unwrap(), "sparse");
        let nested: mlua::Table = t.get("nested").unwrap();
        assert!(nested.get::<bool>("a").unwrap());
    }

    #[test]
    fn functions_and_cycles_are_invalid() {
        let lua = Lua::new();
        let f: mlua::Value = lua.load("return {f = function() end}").eval().unwrap();
        assert_eq!(from_lua(&f).unwrap_err().kind, ErrorKind::Invalid);
        let c: mlua::Value = lua.load("local t = {} t.self = t return t").eval().unwrap();
        assert_eq!(from_lua(&c).unwrap_err().kind, ErrorKind::Invalid);
    }

    #[test]
    fn equal_records_share_one_copy_and_different_ones_do_not() {
        let lua = Lua::new();
        let make = lua
            .load("return function(kind, data) return {type = kind, data = data} end")
            .eval::<mlua::Function>()
            .unwrap();
        let copy = |kind: &str, data: mlua::Value| {
            let t: mlua::Value = make.call((kind, data)).unwrap();
            match from_lua_in(&lua, &t).unwrap() {
                Value::Table(t) => t,
                other => panic!("{other:?}"),
            }
        };
        let a = copy("text", mlua::Value::Integer(1));
        let b = copy("text", mlua::Value::Integer(1));
        assert!(Arc::ptr_eq(&a, &b), "an equal record shares the copy");
        let c = copy("binary", mlua::Value::Integer(1));
        assert!(!Arc::ptr_eq(&a, &c), "another value is another copy");
        assert_eq!(c.map.len(), 2);
        let d = copy("binary", mlua::Value::Number(1.0));
        assert!(!Arc::ptr_eq(&c, &d), "1.0 is not 1");
        assert_eq!(
            to_lua(&lua, &Value::Table(d))
                .unwrap()
                .as_table()
                .unwrap()
                .get::<mlua::Value>("data")
                .unwrap(),
            mlua::Value::Number(1.0)
        );
        // A table with one more entry is not the remembered record.
        let bigger: mlua::Value = lua
            .load("return {type = 'binary', data = 1.0, extra = true}")
            .eval()
            .unwrap();
        match from_lua_in(&lua, &bigger).unwrap() {
            Value::Table(t) => assert_eq!(t.map.len(), 3),
            other => panic!("{other:?}"),
        }
        // Nested tables are never shared.
        let nested: mlua::Value = lua.load("return {inner = {n = 1}}").eval().unwrap();
        let (Value::Table(x), Value::Table(y)) = (
            from_lua_in(&lua, &nested).unwrap(),
            from_lua_in(&lua, &nested).unwrap(),
        ) else {
            panic!("tables expected");
        };
        assert!(!Arc::ptr_eq(&x, &y));
    }

    #[test]
    fn copy_is_deep() {
        let lua = Lua::new();
        let v: mlua::Value = lua.load("return {inner = {n = 1}}").eval().unwrap();
        let owned = from_lua(&v).unwrap();
        v.as_table()
            .unwrap()
            .get::<mlua::Table>("inner")
            .unwrap()
            .set("n", 2)
            .unwrap();
        let back = to_lua(&lua, &owned).unwrap();
        let n: i64 = back
            .as_table()
            .unwrap()
            .get::<mlua::Table>("inner")
            .unwrap()
            .get("n")
            .unwrap();
        assert_eq!(n, 1);
    }
}
