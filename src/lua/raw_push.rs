//! Owned values → fresh Lua copies pushed straight onto a Lua stack: nil, booleans, numbers,
//! strings and tables of them, as `convert::to_lua` makes them, without an mlua reference per
//! value. Error values are userdata made through mlua: `pushable` says no, and the caller takes
//! `convert::to_lua`.
//!
//! Why: a new process gets its arguments this way (`runner::prepare`), on the stack of its
//! coroutine before the first resume, beside a fresh `_ENV` made here too (`push_env`, the one
//! place that says what a process environment is).
//!
//! Audit: pushing allocates, so `push` may raise a memory error, and it raises a stack error
//! itself; it is called only inside a protected call (`resume::HeldThread::create`), holds
//! only borrows, and every Lua call it makes has the stack space it checked for.
#![allow(unsafe_code)]

use crate::process::value::Value;
use mlua::ffi;
use std::ffi::c_int;

/// A fresh process or call environment: an empty table whose metatable is `env_meta` (the
/// read-only globals behind `__index`) and whose `_G` is itself.
pub fn new_env(lua: &mlua::Lua, env_meta: &mlua::RegistryKey) -> mlua::Result<mlua::Table> {
    let meta = env_meta.id();
    // SAFETY: a protected call that pushes one table.
    unsafe { lua.exec_raw((), |state| push_env(state, meta)) }
}

/// Pushes a new environment (see `new_env`) onto `state`; `env_meta` is a registry index.
///
/// # Safety
/// As `push`.
pub unsafe fn push_env(state: *mut ffi::lua_State, env_meta: c_int) {
    if ffi::lua_checkstack(state, 3) == 0 {
        ffi::lua_pushstring(state, c"out of Lua stack space".as_ptr());
        ffi::lua_error(state);
    }
    // Sized for `_G` up front, which skips a rehash per process.
    ffi::lua_createtable(state, 0, 1);
    ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, env_meta as ffi::lua_Integer);
    ffi::lua_setmetatable(state, -2);
    ffi::lua_pushstring(state, c"_G".as_ptr());
    ffi::lua_pushvalue(state, -2);
    ffi::lua_rawset(state, -3);
}

/// Whether `push` can push `v`.
pub fn pushable(v: &Value) -> bool {
    match v {
        Value::Error(_) => false,
        Value::Table(t) => {
            t.array.iter().all(pushable) && t.map.iter().all(|(k, v)| pushable(k) && pushable(v))
        }
        _ => true,
    }
}

/// Pushes a fresh Lua copy of `v` onto `state`.
///
/// # Safety
/// `v` is `pushable`; called inside a protected call on `state`, holding nothing with a
/// destructor: it may raise.
pub unsafe fn push(state: *mut ffi::lua_State, v: &Value) {
    if ffi::lua_checkstack(state, 3) == 0 {
        ffi::lua_pushstring(state, c"out of Lua stack space".as_ptr());
        ffi::lua_error(state);
    }
    match v {
        Value::Nil | Value::Error(_) => ffi::lua_pushnil(state),
        Value::Bool(b) => ffi::lua_pushboolean(state, *b as c_int),
        Value::Int(i) => ffi::lua_pushinteger(state, *i),
        Value::Float(f) => ffi::lua_pushnumber(state, *f),
        Value::Str(b) => {
            ffi::lua_pushlstring(state, b.as_ptr().cast(), b.len());
        }
        Value::Table(t) => {
            let narr = c_int::try_from(t.array.len()).unwrap_or(c_int::MAX);
            let nrec = c_int::try_from(t.map.len()).unwrap_or(c_int::MAX);
            ffi::lua_createtable(state, narr, nrec);
            for (i, item) in t.array.iter().enumerate() {
                push(state, item);
                ffi::lua_rawseti(state, -2, i as ffi::lua_Integer + 1);
            }
            for (k, item) in &t.map {
                push(state, k);
                push(state, item);
                ffi::lua_rawset(state, -3);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::value::{ErrorKind, ErrorValue, Table};
    use mlua::Lua;

    #[test]
    fn pushes_what_to_lua_makes() {
        let lua = Lua::new();
        let nested = Value::Table(std::sync::Arc::new(Table {
            array: vec![Value::Int(1), Value::Str("two".into()), Value::Float(2.5)],
            map: vec![
                (Value::Str("ok".into()), Value::Bool(true)),
                (
                    Value::Str("inner".into()),
                    Value::Table(std::sync::Arc::new(Table {
                        array: vec![Value::Nil, Value::Int(7)],
                        map: vec![],
                    })),
                ),
            ],
        }));
        assert!(pushable(&nested));
        let err = Value::Error(std::sync::Arc::new(ErrorValue::new(
            ErrorKind::Invalid,
            "x",
        )));
        assert!(!pushable(&err));
        let in_table = Value::Table(std::sync::Arc::new(Table {
            array: vec![err],
            map: vec![],
        }));
        assert!(!pushable(&in_table));
        // SAFETY: inside `exec_raw`'s protected call, holding only a borrow.
        let got: mlua::Table = unsafe { lua.exec_raw((), |state| push(state, &nested)) }.unwrap();
        let check: bool = lua
            .load(
                "local t = ... return t[1] == 1 and math.type(t[1]) == 'integer' and t[2] == 'two'
                   and t[3] == 2.5 and t.ok == true and t.inner[1] == nil and t.inner[2] == 7",
            )
            .call(got)
            .unwrap();
        assert!(check);
    }
}
