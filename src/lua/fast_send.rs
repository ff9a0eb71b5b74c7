//! `process.send` for its common case, read straight off the Lua stack: a string destination, a
//! string topic and payloads that are nil, booleans, numbers, strings, or flat tables of those
//! (`{type = "text", data = data}`). Everything else (a nested table, a function, a pid that
//! is not a string, any check that fails) is answered by the mlua
//! binding (`modules::process::send`), which this closure holds as upvalue 1 and calls with
//! the same arguments; every check is free of side effects, so the binding answers exactly as
//! if it had been called directly.
//!
//! Why: `process.send` is half the mlua callbacks of a message round trip, and mlua's
//! callback frame plus its argument references cost more than the send itself.
//!
//! Audit: the fast path calls only Lua functions that cannot raise or allocate (`lua_type`,
//! `lua_tolstring` on values that are strings already, `lua_toboolean`, `lua_tointegerx`,
//! `lua_tonumberx`, `lua_topointer`, `lua_rawlen`, `lua_rawgeti`, and `lua_next` with keys it
//! returned itself, after `lua_checkstack`), so no `longjmp` can skip its Rust values; it
//! copies a string before popping it, and a table read restores the stack on every path. A panic is caught and
//! raised as a Lua error once every Rust value is dropped. The fallback's `lua_call` runs after
//! the fast path has dropped everything it made.
#![allow(unsafe_code)]

use crate::lua::context;
use crate::lua::convert::string_bytes_at;
use crate::process::value::{Table, Value};
use mlua::{ffi, Function, Lua};
use std::ffi::c_int;

/// The `process.send` function: the fast path in front of `full` (the mlua binding).
pub fn create(lua: &Lua, full: Function) -> mlua::Result<Function> {
    crate::lua::c_function::fronting(lua, full, send)
}

enum Fast {
    Sent,
    /// The mlua binding answers: an unusual argument, or a check that failed.
    Full,
    Panicked,
}

unsafe extern "C-unwind" fn send(state: *mut ffi::lua_State) -> c_int {
    let fast = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| try_send(state)))
        .unwrap_or(Fast::Panicked);
    match fast {
        Fast::Sent => {
            ffi::lua_pushboolean(state, 1);
            ffi::lua_pushnil(state);
            2
        }
        Fast::Full => crate::lua::c_function::call_upvalue(state),
        Fast::Panicked => {
            ffi::lua_pushstring(state, c"internal error: process.send panicked".as_ptr());
            ffi::lua_error(state)
        }
    }
}

/// The UTF-8 string argument at `idx`, borrowed from the stack.
unsafe fn str_arg<'a>(state: *mut ffi::lua_State, idx: c_int) -> Option<&'a str> {
    let bytes = bytes_arg(state, idx)?;
    std::str::from_utf8(bytes).ok()
}

unsafe fn bytes_arg<'a>(state: *mut ffi::lua_State, idx: c_int) -> Option<&'a [u8]> {
    if ffi::lua_type(state, idx) != ffi::LUA_TSTRING {
        return None;
    }
    let mut len = 0usize;
    let ptr = ffi::lua_tolstring(state, idx, &mut len);
    Some(std::slice::from_raw_parts(ptr.cast::<u8>(), len))
}

/// The nil, boolean, number or string at `idx`, copied; `None` for anything else.
unsafe fn scalar_at(state: *mut ffi::lua_State, idx: c_int) -> Option<Value> {
    Some(match ffi::lua_type(state, idx) {
        ffi::LUA_TNIL => Value::Nil,
        ffi::LUA_TBOOLEAN => Value::Bool(ffi::lua_toboolean(state, idx) != 0),
        ffi::LUA_TNUMBER if ffi::lua_isinteger(state, idx) != 0 => {
            Value::Int(ffi::lua_tointegerx(state, idx, std::ptr::null_mut()))
        }
        ffi::LUA_TNUMBER => Value::Float(ffi::lua_tonumberx(state, idx, std::ptr::null_mut())),
        ffi::LUA_TSTRING => {
            let b = bytes_arg(state, idx)?;
            Value::Str(string_bytes_at(b, ffi::lua_topointer(state, idx) as usize))
        }
        _ => return None,
    })
}

/// A table at `idx` whose keys and values are all scalars, copied as `convert::from_lua`
/// copies it (sequence part, then the other pairs in `next` order); `None` for anything else.
unsafe fn flat_table_at(state: *mut ffi::lua_State, idx: c_int) -> Option<Value> {
    if ffi::lua_checkstack(state, 3) == 0 {
        return None;
    }
    let top = ffi::lua_gettop(state);
    let table = read_flat_table(state, idx);
    ffi::lua_settop(state, top);
    Some(Value::Table(crate::lua::convert::share_record(table?)))
}

unsafe fn read_flat_table(state: *mut ffi::lua_State, idx: c_int) -> Option<Table> {
    let len = ffi::lua_rawlen(state, idx);
    let mut array = Vec::with_capacity(len);
    for i in 1..=len {
        ffi::lua_rawgeti(state, idx, i as ffi::lua_Integer);
        let item = scalar_at(state, -1)?;
        ffi::lua_pop(state, 1);
        array.push(item);
    }
    let mut map = Vec::new();
    ffi::lua_pushnil(state);
    while ffi::lua_next(state, idx) != 0 {
        if ffi::lua_type(state, -2) == ffi::LUA_TNUMBER && ffi::lua_isinteger(state, -2) != 0 {
            let i = ffi::lua_tointegerx(state, -2, std::ptr::null_mut());
            if i >= 1 && i as usize <= len {
                ffi::lua_pop(state, 1);
                continue;
            }
        }
        // A nil key cannot occur; a nil value is never returned by `next`.
        let key = scalar_at(state, -2)?;
        let value = scalar_at(state, -1)?;
        ffi::lua_pop(state, 1);
        map.push((key, value));
    }
    Some(Table { array, map })
}

unsafe fn try_send(state: *mut ffi::lua_State) -> Fast {
    let nargs = ffi::lua_gettop(state);
    let (Some(dest), Some(topic)) = (str_arg(state, 1), str_arg(state, 2)) else {
        return Fast::Full;
    };
    let mut values = Vec::with_capacity(nargs.saturating_sub(2) as usize);
    for idx in 3..=nargs {
        let value = if ffi::lua_type(state, idx) == ffi::LUA_TTABLE {
            flat_table_at(state, idx)
        } else {
            scalar_at(state, idx)
        };
        match value {
            Some(v) => values.push(v),
            None => return Fast::Full,
        }
    }
    let Some(ctx) = context::current() else {
        return Fast::Full;
    };
    if crate::lua::modules::process::send_checked(&ctx, dest, topic, values) {
        Fast::Sent
    } else {
        Fast::Full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anything_off_the_fast_path_reaches_the_full_binding_with_its_arguments() {
        let lua = Lua::new();
        let full = lua
            .create_function(|_, args: mlua::Variadic<mlua::Value>| {
                Ok(format!("full {}", args.len()))
            })
            .unwrap();
        lua.globals()
            .set("send", create(&lua, full).unwrap())
            .unwrap();
        // Outside a process every call falls back; so do tables, numbers as pids, and nothing.
        let r: String = lua
            .load(
                "return table.concat({send('{a|1}', 't', 1, 'x', true, nil), send({}, 't'),
                     send(12, 't', {}), send()}, ' ')",
            )
            .eval()
            .unwrap();
        assert_eq!(r, "full 6 full 2 full 3 full 0");
    }
}
