//! Helpers for the C functions of `message.rs`, `fast_send.rs` and `fast_receive.rs`: getting
//! values made through mlua onto a C function's stack, a fast path in front of an mlua
//! binding (`fronting`, `call_upvalue`), and reading an mlua value on the raw stack
//! (`read_pushed`).
//!
//! Audit: `push_made` and `call_upvalue` may raise a Lua error (`longjmp`), so their callers
//! must hold nothing with a destructor when they call them; `push_made` drops what it made
//! before it raises. `read_pushed` never raises: it checks stack space and restores the height.
#![allow(unsafe_code)]

use mlua::{ffi, Function, Lua};
use std::ffi::c_int;

/// Pushes values made through mlua onto `state` (mlua pushes onto its own current stack, which
/// may be another thread of the same state), or raises their error. Returns how many it pushed.
///
/// # Safety
/// `state` is the stack of a C function Lua is running now, and the caller holds nothing
/// with a destructor: this may raise.
pub unsafe fn push_made(
    state: *mut ffi::lua_State,
    made: impl FnOnce(&Lua) -> mlua::Result<Vec<mlua::Value>>,
) -> c_int {
    enum Raise {
        /// mlua's error value is on top of `state`.
        Pushed,
        NoRoom,
    }
    let lua = Lua::get_or_init_from_ptr(state);
    let pushed: Result<c_int, Raise> = lua.exec_raw_lua(|raw| {
        let (values, failed) = match made(lua) {
            Ok(values) => (values, false),
            Err(e) => (vec![mlua::Value::Error(Box::new(e))], true),
        };
        let n = values.len() as c_int;
        let from = raw.state();
        if ffi::lua_checkstack(from, n + 2) == 0 || ffi::lua_checkstack(state, n) == 0 {
            return Err(Raise::NoRoom);
        }
        let height = ffi::lua_gettop(from);
        for v in &values {
            if raw.push_value(v).is_err() {
                ffi::lua_settop(from, height);
                return Err(Raise::NoRoom);
            }
        }
        ffi::lua_xmove(from, state, n);
        if failed {
            Err(Raise::Pushed)
        } else {
            Ok(n)
        }
    });
    // Everything with a destructor is gone by now, so raising skips only plain frames.
    match pushed {
        Ok(n) => n,
        Err(Raise::Pushed) => ffi::lua_error(state),
        Err(Raise::NoRoom) => {
            ffi::lua_pushstring(state, c"out of Lua stack space".as_ptr());
            ffi::lua_error(state)
        }
    }
}

/// `fast` as a Lua function holding `full` (the mlua binding it fronts) as upvalue 1, for
/// `call_upvalue`.
pub fn fronting(lua: &Lua, full: Function, fast: ffi::lua_CFunction) -> mlua::Result<Function> {
    // SAFETY: a protected call (`exec_raw`) that pushes `full` and wraps it in a C closure.
    unsafe {
        lua.exec_raw::<Function>(full, |state| {
            ffi::lua_pushcclosure(state, fast, 1);
        })
    }
}

/// The body of a fast path fronting an mlua binding (`fronting`): runs `fast`, which answers
/// `Some` when it did the call's work and `None` (having done nothing) when the binding must
/// answer. `Some` is returned to Lua by `answer`; `None` hands the call to the binding
/// (`call_upvalue`); a panic becomes a Lua error saying `panicked`.
///
/// # Safety
/// As `call_upvalue`; `fast` may not raise, and `answer` may raise only while the value it is
/// given has no destructor to skip.
pub unsafe fn fast_or_full<T>(
    state: *mut ffi::lua_State,
    panicked: &std::ffi::CStr,
    fast: impl FnOnce() -> Option<T>,
    answer: impl FnOnce(*mut ffi::lua_State, T) -> c_int,
) -> c_int {
    // The panic's payload is dropped here, before anything may raise.
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(fast)).map_err(drop);
    match done {
        Ok(Some(done)) => answer(state, done),
        Ok(None) => call_upvalue(state),
        Err(()) => {
            ffi::lua_pushstring(state, panicked.as_ptr());
            ffi::lua_error(state)
        }
    }
}

/// Calls the function in upvalue 1 with this call's arguments and returns all its results: a
/// fast path handing a call to the mlua binding it fronts. Errors propagate as Lua errors. The
/// callee may yield (a wait): the call has a continuation that returns what it returned.
///
/// # Safety
/// `state` is the stack of a running C closure (or its continuation) whose upvalue 1 is a
/// function, with only the call's arguments on it, and the caller holds nothing with a
/// destructor: the callee may raise or yield.
pub unsafe fn call_upvalue(state: *mut ffi::lua_State) -> c_int {
    let nargs = ffi::lua_gettop(state);
    ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
    ffi::lua_rotate(state, 1, 1);
    ffi::lua_callk(state, nargs, ffi::LUA_MULTRET, 0, Some(return_all));
    ffi::lua_gettop(state)
}

unsafe extern "C-unwind" fn return_all(
    state: *mut ffi::lua_State,
    _status: c_int,
    _ctx: ffi::lua_KContext,
) -> c_int {
    ffi::lua_gettop(state)
}

/// Pushes `v` onto the current stack of `lua` and runs `read` on it (`v` on top, `extra` more
/// slots free); the stack height is restored after. `None` when there is no stack room.
///
/// # Safety
/// `read` must not raise a Lua error.
pub unsafe fn read_pushed<R>(
    lua: &Lua,
    v: &mlua::Value,
    extra: c_int,
    read: impl FnOnce(*mut ffi::lua_State) -> Option<R>,
) -> Option<R> {
    lua.exec_raw_lua(|raw| {
        let state = raw.state();
        // `push_value` takes two slots.
        if ffi::lua_checkstack(state, 2 + extra) == 0 {
            return None;
        }
        let height = ffi::lua_gettop(state);
        let read = match raw.push_value(v) {
            Ok(()) => read(state),
            Err(_) => None,
        };
        ffi::lua_settop(state, height);
        read
    })
}

/// A stand-in for the mlua binding a fast path fronts, for its tests: answers `"full N"`, N
/// being how many arguments reached it.
#[cfg(test)]
pub fn counting_binding(lua: &Lua) -> Function {
    lua.create_function(|_, args: mlua::Variadic<mlua::Value>| Ok(format!("full {}", args.len())))
        .unwrap()
}
