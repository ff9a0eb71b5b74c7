//! The receive try of a process's own `inbox` and `events` channels without mlua's callback
//! frame. `channel.rs`'s wait loop calls the try once before a wait and once after it, so a
//! message that had to be waited for costs two tries; through mlua each was a callback frame
//! and a typed borrow of the channel userdata.
//!
//! A channel userdata made by `process.inbox()`/`process.events()` is entered in a per-worker
//! table by its address, with its core. The try looks its argument up there; anything not in
//! the table (other channels, a wrong argument) goes to the mlua try, held as upvalue 1 and
//! called with the same arguments.
//!
//! Audit:
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

unsafe extern "C-unwind" fn try_receive(state: *mut ffi::lua_State) -> c_int {
    let core = if ffi::lua_type(state, 1) == ffi::LUA_TUSERDATA {
        let key = ffi::lua_topointer(state, 1) as usize;
        FAST.with(|f| f.borrow().get(&key).cloned())
    } else {
        None
    };
    let Some(core) = core else {
        return call_upvalue(state);
    };
    let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| try_receive_from(&core)));
    drop(core);
    let (status, open) = match tried {
        Ok(Tried::Item(item)) => {
            ffi::lua_pushinteger(state, wait::TWO);
            // The common case, straight onto the stack (no mlua value in between); with memory
            // caps on this worker the message comes back, to be made protected below.
            let item = match item {
                Item::Message(m) => match crate::lua::message::push(state, m) {
                    Ok(()) => {
                        ffi::lua_pushboolean(state, 1);
                        return 3;
                    }
                    Err(m) => Item::Message(m),
                },
                other => other,
            };
            ffi::lua_pop(state, 1);
            return push_made(state, move |lua| {
                Ok(vec![
                    mlua::Value::Integer(wait::TWO),
                    item_to_lua(lua, item)?,
                    mlua::Value::Boolean(true),
                ])
            });
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
