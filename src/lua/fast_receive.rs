//! The receive of a process's own `inbox` and `events` channels without mlua's callback frame,
//! and without the Lua wait loop (`wait.rs`).
//!
//! - `receive` is `ch:receive()` itself: a C function that tries, and when nothing is there
//!   yields the pending marker with `lua_yieldk`; Lua calls its continuation when the process
//!   is resumed, and it tries again. The Lua wait loop cost a Lua frame with varargs, two calls
//!   of the try and a call of `coroutine.yield` per message waited for.
//! - The try (`try_receive`) is what the Lua wait loop calls for every other channel.
//!
//! A channel userdata made by `process.inbox()`/`process.events()` is entered in a per-worker
//! table by its address, with its core. The try looks its argument up there; anything not in
//! the table (other channels, a wrong argument) goes to the mlua try, held as upvalue 1 and
//! called with the same arguments.
//!
//! Audit:
//! - `receive` yields (a `longjmp` out of its frame) only after dropping every Rust value, and
//!   hands anything it cannot do itself (another channel, a rendezvous, a wrong argument, the
//!   async fallback) to the Lua wait loop in its upvalue 1 (`c_function::call_upvalue`, which
//!   may yield too); the continuations only return what is on the stack.
//! - An entry exists only while its userdata is alive: the process context holds the userdata
//!   in the Lua registry and removes the entry before it releases that key
//!   (`impl Drop for ProcCtx`), so an address in the table is never a freed or reused block.
//! - The fast path calls no Lua function that can raise until every Rust value it made is
//!   dropped or handed to `c_function::push_made`, which raises only after dropping its own, or
//!   to `message::push`, which allocates unprotected only where mlua would too (no memory
//!   caps on the worker).
//! - A panic is caught and raised as a Lua error.
#![allow(unsafe_code)]

use crate::lua::c_function::{call_upvalue, push_made};
use crate::lua::channel::{item_to_lua, try_receive_from, ChanCore, Item, Tried};
use crate::lua::wait;
use crate::process::table::IdHasher;
use mlua::{ffi, AnyUserData, Function, Lua};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

type Fast = HashMap<usize, Rc<ChanCore>, BuildHasherDefault<IdHasher>>;

thread_local! {
    static FAST: RefCell<Fast> = RefCell::new(Fast::default());
}

/// Enters `ud` (a channel userdata holding `core`) in the fast table; returns its address,
/// the key for `remove`.
pub fn enter(ud: &AnyUserData, core: &Rc<ChanCore>) -> usize {
    let addr = ud.to_pointer() as usize;
    FAST.with(|f| f.borrow_mut().insert(addr, core.clone()));
    addr
}

/// Removes the channel entered at `addr`; call before the last reference to it is released.
pub fn remove(addr: usize) {
    let _ = FAST.try_with(|f| f.borrow_mut().remove(&addr));
}

/// How many channels this worker's fast table holds.
#[cfg(test)]
pub fn entered() -> usize {
    FAST.with(|f| f.borrow().len())
}

/// The try function: the fast path in front of `full` (the mlua try).
pub fn create(lua: &Lua, full: Function) -> mlua::Result<Function> {
    crate::lua::c_function::fronting(lua, full, try_receive)
}

/// `ch:receive()`: the fast wait in front of `wait_loop` (the Lua wait loop over the tries).
pub fn receive_function(lua: &Lua, wait_loop: Function) -> mlua::Result<Function> {
    crate::lua::c_function::fronting(lua, wait_loop, receive)
}

unsafe extern "C-unwind" fn receive(state: *mut ffi::lua_State) -> c_int {
    let nargs = ffi::lua_gettop(state);
    receive_again(state, ffi::LUA_OK, nargs as ffi::lua_KContext)
}

/// One receive try; `nargs` (the context) is how many arguments the call had. Resumed after a
/// wait, anything above them is what the resume passed: only mlua's terminate signal passes a
/// value (the task was dropped while waiting), and then the script must never run again.
unsafe extern "C-unwind" fn receive_again(
    state: *mut ffi::lua_State,
    status: c_int,
    nargs: ffi::lua_KContext,
) -> c_int {
    let nargs = nargs as c_int;
    if status == ffi::LUA_YIELD && ffi::lua_gettop(state) > nargs {
        return stay_suspended(state, ffi::LUA_YIELD, 0);
    }
    // Nothing but the arguments is on the stack here, on entry and in the continuation.
    let Some(core) = fast_core(state) else {
        return call_upvalue(state);
    };
    let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| try_receive_from(&core)));
    drop(core);
    match tried {
        Ok(Tried::Item(item)) => push_received(state, item),
        Ok(Tried::Closed) => {
            ffi::lua_pushnil(state);
            ffi::lua_pushboolean(state, 0);
            2
        }
        Ok(Tried::Wait) => {
            // The waker is registered: yield as an mlua async call does when it waits.
            ffi::lua_pushlightuserdata(state, mlua::Lua::poll_pending().0);
            ffi::lua_yieldk(state, 1, nargs as ffi::lua_KContext, Some(receive_again))
        }
        Ok(Tried::Slow) => call_upvalue(state),
        Err(_) => {
            ffi::lua_pushstring(state, c"internal error: receive panicked".as_ptr());
            ffi::lua_error(state)
        }
    }
}

/// Yields with nothing, again each time it is resumed.
unsafe extern "C-unwind" fn stay_suspended(
    state: *mut ffi::lua_State,
    _status: c_int,
    _ctx: ffi::lua_KContext,
) -> c_int {
    ffi::lua_settop(state, 0);
    ffi::lua_yieldk(state, 0, 0, Some(stay_suspended))
}

/// The core of the process channel that argument 1 is, if it is one.
unsafe fn fast_core(state: *mut ffi::lua_State) -> Option<Rc<ChanCore>> {
    if ffi::lua_type(state, 1) != ffi::LUA_TUSERDATA {
        return None;
    }
    let key = ffi::lua_topointer(state, 1) as usize;
    FAST.with(|f| f.borrow().get(&key).cloned())
}

/// Pushes a received item and `true`; returns 2. The caller holds nothing with a destructor:
/// with memory caps on this worker the message is made in a protected call (`push_made`),
/// which may raise.
unsafe fn push_received(state: *mut ffi::lua_State, item: Item) -> c_int {
    // The common case, straight onto the stack (no mlua value in between).
    let item = match item {
        Item::Message(m) => match crate::lua::message::push(state, m) {
            Ok(()) => {
                ffi::lua_pushboolean(state, 1);
                return 2;
            }
            Err(m) => Item::Message(m),
        },
        other => other,
    };
    push_made(state, move |lua| {
        Ok(vec![item_to_lua(lua, item)?, mlua::Value::Boolean(true)])
    })
}

unsafe extern "C-unwind" fn try_receive(state: *mut ffi::lua_State) -> c_int {
    let Some(core) = fast_core(state) else {
        return call_upvalue(state);
    };
    let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| try_receive_from(&core)));
    drop(core);
    let (status, open) = match tried {
        Ok(Tried::Item(item)) => {
            // (status, item, true): the status stays below what `push_received` pushes.
            ffi::lua_pushinteger(state, wait::TWO);
            return 1 + push_received(state, item);
        }
        Ok(Tried::Closed) => (wait::TWO, false),
        Ok(Tried::Wait) => (wait::WAIT, false),
        Ok(Tried::Slow) => (wait::SLOW, false),
        Err(_) => {
            ffi::lua_pushstring(state, c"internal error: receive panicked".as_ptr());
            ffi::lua_error(state)
        }
    };
    ffi::lua_pushinteger(state, status);
    ffi::lua_pushnil(state);
    ffi::lua_pushboolean(state, open as c_int);
    3
}
