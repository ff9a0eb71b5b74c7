//! `process.send` for its common case, read straight off the Lua stack: a string destination, a
//! string topic and payloads that `raw_copy.rs` copies (nil, booleans, numbers, strings, and
//! tables of those, such as the tutorial's `{type = "text", data = data}`). Everything else (an
//! error object, a function, a pid that is not a string, any check that fails) is answered by
//! the mlua binding (`modules::process::send`), which this closure holds as upvalue 1 and calls
//! with the same arguments; every check is free of side effects, so the binding answers exactly
//! as if it had been called directly.
//!
//! Why: `process.send` is half the mlua callbacks of a message round trip, and mlua's
//! callback frame plus its argument references cost more than the send itself.
//!
//! Audit: the fast path calls only Lua functions that cannot raise or allocate (`lua_type`,
//! `lua_tolstring` on values that are strings already, and `raw_copy::value_at`, which keeps
//! to the same rule and restores the stack), so no `longjmp` can skip its Rust values; it
//! reads the destination and topic in place only while they are arguments on this call's
//! stack. A panic is caught and raised as a Lua error once every Rust value is dropped. The
//! fallback's `lua_call` runs after the fast path has dropped everything it made.
#![allow(unsafe_code)]

use crate::lua::{context, raw_copy};
use mlua::{ffi, Function, Lua};
use std::ffi::c_int;

/// The `process.send` function: the fast path in front of `full` (the mlua binding).
pub fn create(lua: &Lua, full: Function) -> mlua::Result<Function> {
    crate::lua::c_function::fronting(lua, full, send)
}

unsafe extern "C-unwind" fn send(state: *mut ffi::lua_State) -> c_int {
    crate::lua::c_function::fast_or_full(
        state,
        c"internal error: process.send panicked",
        || try_send(state),
        |state, ()| {
            ffi::lua_pushboolean(state, 1);
            ffi::lua_pushnil(state);
            2
        },
    )
}

/// `Some` once sent; `None` (nothing done) when the binding must answer.
unsafe fn try_send(state: *mut ffi::lua_State) -> Option<()> {
    // The destination stays bytes: a pid's id is read without a UTF-8 check of the whole text.
    let dest = raw_copy::bytes_at(state, 1)?;
    let topic = raw_copy::str_at(state, 2)?;
    let values = raw_copy::values_from(state, 3)?;
    let ctx = context::current()?;
    crate::lua::modules::process::send_checked(&ctx, dest, topic, values).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anything_off_the_fast_path_reaches_the_full_binding_with_its_arguments() {
        let lua = Lua::new();
        let full = crate::lua::c_function::counting_binding(&lua);
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
