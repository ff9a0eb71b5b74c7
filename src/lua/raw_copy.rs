//! Lua → owned copies read straight off the Lua stack: the common shapes of
//! `convert::from_lua` (nil, booleans, numbers, strings, and tables of those, nested) without
//! mlua's per-value references.
//!
//! Why: through mlua's API every table entry becomes two value references that are created
//! and dropped again; callgrind put a small actor's metadata table (five entries) at ~23,000
//! instructions, against a few hundred here. The copy is the same value: sequence part, then
//! the other pairs in `next` order, a table equal to the remembered record shared
//! (`holds_exactly`), long strings copied once (`convert::string_bytes_at`). Anything else in the value (userdata such
//! as error objects, functions, threads, a cycle, nesting past `MAX_DEPTH`) makes it answer
//! `None`, and the caller runs the general copy, which also words every error.
//!
//! Audit: only Lua functions that cannot raise or allocate are called (`lua_type`,
//! `lua_tolstring` on strings, `lua_toboolean`, `lua_tointegerx`, `lua_tonumberx`,
//! `lua_topointer`, `lua_rawlen`, `lua_rawgeti`, and `lua_next` with keys it returned itself),
//! plus `lua_checkstack`, which reports failure instead of raising. So no `longjmp` skips a
//! Rust value. A string is copied before it is popped, and the outermost call restores the
//! stack height on every path.
#![allow(unsafe_code)]

use crate::lua::convert::{last_record_if, remember_copy, string_bytes_at, MAX_DEPTH};
use crate::process::value::{Table, Value};
use mlua::{ffi, Lua};
use std::ffi::{c_int, c_void};

/// `v` copied, or `None` when the general copy must answer (see the module notes).
pub fn from_lua(lua: &Lua, v: &mlua::Value) -> Option<Value> {
    // SAFETY: `value_at` neither raises nor leaves anything on the stack.
    unsafe { crate::lua::c_function::read_pushed(lua, v, 1, |state| value_at(state, -1)) }
}

/// The value at stack index `idx`, copied as `from_lua` copies it.
///
/// # Safety
/// `state` is a live Lua state and `idx` a valid index on its stack.
pub unsafe fn value_at(state: *mut ffi::lua_State, idx: c_int) -> Option<Value> {
    let top = ffi::lua_gettop(state);
    let mut open = Vec::new();
    let copied = copy_at(state, ffi::lua_absindex(state, idx), &mut open);
    ffi::lua_settop(state, top);
    copied
}

/// The bytes of the string at `idx`, borrowed from the stack; `None` for any other type.
///
/// # Safety
/// As `value_at`; the slice lives only while the string stays on the stack.
pub unsafe fn bytes_at<'a>(state: *mut ffi::lua_State, idx: c_int) -> Option<&'a [u8]> {
    if ffi::lua_type(state, idx) != ffi::LUA_TSTRING {
        return None;
    }
    let mut len = 0usize;
    let ptr = ffi::lua_tolstring(state, idx, &mut len);
    Some(std::slice::from_raw_parts(ptr.cast::<u8>(), len))
}

/// The UTF-8 string at `idx`, borrowed from the stack; `None` for anything else.
///
/// # Safety
/// As `bytes_at`.
pub unsafe fn str_at<'a>(state: *mut ffi::lua_State, idx: c_int) -> Option<&'a str> {
    std::str::from_utf8(bytes_at(state, idx)?).ok()
}

/// The values from stack index `first` to the top, each copied as `value_at` copies it; `None`
/// when any of them needs the general copy.
///
/// # Safety
/// As `value_at`.
pub unsafe fn values_from(state: *mut ffi::lua_State, first: c_int) -> Option<Vec<Value>> {
    let top = ffi::lua_gettop(state);
    let mut values = Vec::with_capacity((top - first + 1).max(0) as usize);
    for idx in first..=top {
        values.push(value_at(state, idx)?);
    }
    Some(values)
}

/// `idx` is absolute. `open` holds the tables being copied (cycle and depth check). On `None`
/// the stack may be left higher; `value_at` restores it.
unsafe fn copy_at(
    state: *mut ffi::lua_State,
    idx: c_int,
    open: &mut Vec<*const c_void>,
) -> Option<Value> {
    Some(match ffi::lua_type(state, idx) {
        ffi::LUA_TNIL => Value::Nil,
        ffi::LUA_TBOOLEAN => Value::Bool(ffi::lua_toboolean(state, idx) != 0),
        ffi::LUA_TNUMBER if ffi::lua_isinteger(state, idx) != 0 => {
            Value::Int(ffi::lua_tointegerx(state, idx, std::ptr::null_mut()))
        }
        ffi::LUA_TNUMBER => Value::Float(ffi::lua_tonumberx(state, idx, std::ptr::null_mut())),
        ffi::LUA_TSTRING => {
            let b = bytes_at(state, idx)?;
            Value::Str(string_bytes_at(b, ffi::lua_topointer(state, idx) as usize))
        }
        ffi::LUA_TTABLE => match last_record_if(|record| holds_exactly(state, idx, record)) {
            Some(record) => Value::Table(record),
            None => Value::Table(remember_copy(copy_table(state, idx, open)?)),
        },
        _ => return None,
    })
}

/// Whether the table at `idx` holds exactly `record`'s entries, in `next` order (so its copy
/// would equal the record), read without copying anything. Leaves the stack as it was.
unsafe fn holds_exactly(state: *mut ffi::lua_State, idx: c_int, record: &Table) -> bool {
    if !record.array.is_empty()
        || ffi::lua_rawlen(state, idx) != 0
        || ffi::lua_checkstack(state, 2) == 0
    {
        return false;
    }
    let top = ffi::lua_gettop(state);
    let mut seen = 0;
    let mut same = true;
    ffi::lua_pushnil(state);
    while ffi::lua_next(state, idx) != 0 {
        let value_idx = ffi::lua_gettop(state);
        same = match record.map.get(seen) {
            Some((k, v)) => scalar_is(state, value_idx - 1, k) && scalar_is(state, value_idx, v),
            None => false,
        };
        if !same {
            break;
        }
        seen += 1;
        ffi::lua_pop(state, 1);
    }
    ffi::lua_settop(state, top);
    same && seen == record.map.len()
}

/// Whether the value at `idx` is the scalar `owned` (an integer never equals a float).
unsafe fn scalar_is(state: *mut ffi::lua_State, idx: c_int, owned: &Value) -> bool {
    match (ffi::lua_type(state, idx), owned) {
        (ffi::LUA_TSTRING, Value::Str(b)) => bytes_at(state, idx) == Some(&b[..]),
        (ffi::LUA_TNUMBER, Value::Int(i)) => {
            ffi::lua_isinteger(state, idx) != 0
                && ffi::lua_tointegerx(state, idx, std::ptr::null_mut()) == *i
        }
        (ffi::LUA_TNUMBER, Value::Float(f)) => {
            ffi::lua_isinteger(state, idx) == 0
                && ffi::lua_tonumberx(state, idx, std::ptr::null_mut()).to_bits() == f.to_bits()
        }
        (ffi::LUA_TBOOLEAN, Value::Bool(b)) => (ffi::lua_toboolean(state, idx) != 0) == *b,
        _ => false,
    }
}

unsafe fn copy_table(
    state: *mut ffi::lua_State,
    idx: c_int,
    open: &mut Vec<*const c_void>,
) -> Option<Table> {
    let ptr = ffi::lua_topointer(state, idx);
    if open.contains(&ptr) || open.len() >= MAX_DEPTH || ffi::lua_checkstack(state, 4) == 0 {
        return None;
    }
    open.push(ptr);
    let len = ffi::lua_rawlen(state, idx);
    let mut array = Vec::with_capacity(len);
    for i in 1..=len {
        ffi::lua_rawgeti(state, idx, i as ffi::lua_Integer);
        let item = copy_at(state, ffi::lua_gettop(state), open)?;
        ffi::lua_pop(state, 1);
        array.push(item);
    }
    let mut map = Vec::new();
    ffi::lua_pushnil(state);
    while ffi::lua_next(state, idx) != 0 {
        let value_idx = ffi::lua_gettop(state);
        let key_idx = value_idx - 1;
        if ffi::lua_type(state, key_idx) == ffi::LUA_TNUMBER
            && ffi::lua_isinteger(state, key_idx) != 0
        {
            let i = ffi::lua_tointegerx(state, key_idx, std::ptr::null_mut());
            if i >= 1 && i as usize <= len {
                ffi::lua_pop(state, 1);
                continue;
            }
        }
        let key = copy_at(state, key_idx, open)?;
        let value = copy_at(state, value_idx, open)?;
        ffi::lua_pop(state, 1);
        map.push((key, value));
    }
    open.pop();
    Some(Table { array, map })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(lua: &Lua, src: &str) -> (Option<Value>, Value) {
        let v: mlua::Value = lua.load(src).eval().unwrap();
        (
            from_lua(lua, &v),
            crate::lua::convert::from_lua(&v).unwrap(),
        )
    }

    #[test]
    fn copies_what_the_general_copy_copies() {
        let lua = Lua::new();
        for src in [
            "return nil",
            "return 1",
            "return 2.0",
            "return 'x\\0y'",
            "return { 1, 2.5, 'three', k = true, [10] = 'sparse', [-1] = 0, [1.5] = 'f' }",
            "return { a = { b = { c = { 'deep' } } }, list = { 1, { 2, { 3 } } } }",
            "return { [{ 'table key' }] = 'v' }",
            "local shared = { 1 } return { shared, shared }",
            "return { 1, nil, 3 }",
            "return {}",
        ] {
            let (raw, general) = both(&lua, src);
            assert_eq!(raw.as_ref(), Some(&general), "{src}");
        }
    }

    #[test]
    fn leaves_the_unusual_to_the_general_copy() {
        let lua = Lua::new();
        for src in [
            "return { f = print }",
            "return { co = coroutine.create(print) }",
            "local t = {} t.self = t return t",
            "return { nested = { file = io.stdout } }",
        ] {
            let v: mlua::Value = lua.load(src).eval().unwrap();
            assert_eq!(from_lua(&lua, &v), None, "{src}");
        }
        let mut deep = String::from("return ");
        for _ in 0..=MAX_DEPTH {
            deep.push('{');
        }
        for _ in 0..=MAX_DEPTH {
            deep.push('}');
        }
        let v: mlua::Value = lua.load(&deep).eval().unwrap();
        assert_eq!(from_lua(&lua, &v), None, "too deep");
    }

    #[test]
    fn an_equal_record_is_the_remembered_copy_and_a_different_one_is_not() {
        let lua = Lua::new();
        let copy = |src: &str| {
            let v: mlua::Value = lua.load(src).eval().unwrap();
            match from_lua(&lua, &v) {
                Some(Value::Table(t)) => t,
                other => panic!("{src}: {other:?}"),
            }
        };
        let first = copy("return { type = 'text', data = 'abc' }");
        let again = copy("return { type = 'text', data = 'abc' }");
        assert!(std::sync::Arc::ptr_eq(&first, &again));
        for different in [
            "return { type = 'text', data = 'abd' }",
            "return { type = 'text' }",
            "return { type = 'text', data = 'abc', n = 1 }",
            "return { type = 'text', data = 1 }",
            "return { 'text', 'abc' }",
        ] {
            let other = copy(different);
            assert!(!std::sync::Arc::ptr_eq(&first, &other), "{different}");
            // The general copy agrees on the content.
            let v: mlua::Value = lua.load(different).eval().unwrap();
            assert_eq!(
                *other,
                *match crate::lua::convert::from_lua(&v).unwrap() {
                    Value::Table(t) => t,
                    _ => unreachable!(),
                }
            );
        }
        // An integer and an equal float are different records.
        let int = copy("return { n = 1 }");
        let float = copy("return { n = 1.0 }");
        assert!(!std::sync::Arc::ptr_eq(&int, &float));
        assert_eq!(float.map[0].1, Value::Float(1.0));
    }

    #[test]
    fn the_stack_is_left_as_it_was() {
        let lua = Lua::new();
        let v: mlua::Value = lua.load("return { 1, { f = print } }").eval().unwrap();
        let before = lua.exec_raw_lua(|raw| unsafe { ffi::lua_gettop(raw.state()) });
        assert_eq!(from_lua(&lua, &v), None);
        let _ = from_lua(&lua, &lua.load("return { 1, { 2 } }").eval().unwrap());
        let after = lua.exec_raw_lua(|raw| unsafe { ffi::lua_gettop(raw.state()) });
        assert_eq!(before, after);
    }
}
