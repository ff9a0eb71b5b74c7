//! `process.spawn` (and its `_monitored` / `_linked` variants) for the common case, read
//! straight off the Lua stack: string entry and host ids, arguments that `raw_copy.rs` copies,
//! no policy to evaluate, and an entry that resolves to a process on a running host. Anything
//! else is answered by the mlua binding (`modules::process::do_spawn`), held as upvalue 1 and
//! called with the same arguments; `spawn_checked` does nothing unless it spawns, so the
//! binding answers exactly as if it had been called directly.
//!
//! Why: a spawn loop's spawner spends as much on mlua's callback frame, its argument
//! references and their drops as on the spawn itself.
//!
//! Audit: the fast path calls only Lua functions that cannot raise (`lua_type`,
//! `lua_tolstring` on strings, `raw_copy::value_at`), reads the ids in place only while they
//! are arguments on this call's stack, and formats the pid into a buffer on the C stack, so
//! when `lua_pushlstring` may raise every Rust value is dropped. A panic is caught and raised as
//! a Lua error after the same point.
#![allow(unsafe_code)]

use crate::lua::{context, raw_copy};
use mlua::{ffi, Function, Lua};
use std::ffi::c_int;

/// The longest pid text returned from the fast path (longer ones take the binding).
const PID_ROOM: usize = 192;

/// The spawn function `full` (the mlua binding) fronted by the fast path for the given mode.
pub fn create(lua: &Lua, full: Function, link: bool, monitor: bool) -> mlua::Result<Function> {
    let fast: ffi::lua_CFunction = match (link, monitor) {
        (false, false) => spawn::<false, false>,
        (false, true) => spawn::<false, true>,
        (true, false) => spawn::<true, false>,
        (true, true) => spawn::<true, true>,
    };
    crate::lua::c_function::fronting(lua, full, fast)
}

/// A pid's text, formatted without allocating.
struct PidText {
    bytes: [u8; PID_ROOM],
    len: usize,
}

impl std::fmt::Write for PidText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

unsafe extern "C-unwind" fn spawn<const LINK: bool, const MONITOR: bool>(
    state: *mut ffi::lua_State,
) -> c_int {
    crate::lua::c_function::fast_or_full(
        state,
        c"internal error: process.spawn panicked",
        || try_spawn(state, LINK, MONITOR),
        // `PidText` has no destructor, so the push may raise.
        |state, pid: PidText| {
            ffi::lua_pushlstring(state, pid.bytes.as_ptr().cast(), pid.len);
            ffi::lua_pushnil(state);
            2
        },
    )
}

/// The new pid's text; `None` (nothing done) when the binding must answer.
unsafe fn try_spawn(state: *mut ffi::lua_State, link: bool, monitor: bool) -> Option<PidText> {
    use std::fmt::Write;
    let id = raw_copy::str_at(state, 1)?;
    let host = raw_copy::str_at(state, 2)?;
    let args = raw_copy::values_from(state, 3)?;
    let ctx = context::current()?;
    let pid =
        crate::lua::modules::process::spawn_checked(&ctx, id, host, args, link, monitor, PID_ROOM)?;
    let mut text = PidText {
        bytes: [0; PID_ROOM],
        len: 0,
    };
    // `spawn_checked` made sure the text fits.
    write!(text, "{pid}").expect("a pid within PID_ROOM");
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anything_off_the_fast_path_reaches_the_full_binding_with_its_arguments() {
        let lua = Lua::new();
        let full = crate::lua::c_function::counting_binding(&lua);
        for (link, monitor) in [(false, false), (false, true), (true, false), (true, true)] {
            lua.globals()
                .set("spawn", create(&lua, full.clone(), link, monitor).unwrap())
                .unwrap();
            // Outside a process every call falls back; so do non-string ids and functions.
            let r: String = lua
                .load(
                    "return table.concat({spawn('a', 'b', 1, {x = 'y'}), spawn(1, 'b'),
                         spawn('a', 'b', print), spawn()}, ' ')",
                )
                .eval()
                .unwrap();
            assert_eq!(r, "full 4 full 2 full 3 full 0");
        }
    }

    #[test]
    fn pid_text_refuses_what_does_not_fit() {
        use std::fmt::Write;
        let mut t = PidText {
            bytes: [0; PID_ROOM],
            len: 0,
        };
        assert!(write!(t, "{{app:host|{}}}", u64::MAX).is_ok());
        assert_eq!(
            &t.bytes[..t.len],
            format!("{{app:host|{}}}", u64::MAX).as_bytes()
        );
        assert!(write!(t, "{}", "x".repeat(PID_ROOM)).is_err());
    }
}
