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

enum Fast {
    Spawned,
    /// The mlua binding answers: an unusual argument, or a check that failed.
    Full,
    Panicked,
}

unsafe extern "C-unwind" fn spawn<const LINK: bool, const MONITOR: bool>(
    state: *mut ffi::lua_State,
) -> c_int {
    let mut pid = PidText {
        bytes: [0; PID_ROOM],
        len: 0,
    };
    let fast = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        try_spawn(state, LINK, MONITOR, &mut pid)
    }))
    .unwrap_or(Fast::Panicked);
    match fast {
        Fast::Spawned => {
            ffi::lua_pushlstring(state, pid.bytes.as_ptr().cast(), pid.len);
            ffi::lua_pushnil(state);
            2
        }
        Fast::Full => crate::lua::c_function::call_upvalue(state),
        Fast::Panicked => {
            ffi::lua_pushstring(state, c"internal error: process.spawn panicked".as_ptr());
            ffi::lua_error(state)
        }
    }
}

/// The UTF-8 string argument at `idx`, borrowed from the stack.
unsafe fn str_arg<'a>(state: *mut ffi::lua_State, idx: c_int) -> Option<&'a str> {
    std::str::from_utf8(raw_copy::bytes_at(state, idx)?).ok()
}

unsafe fn try_spawn(
    state: *mut ffi::lua_State,
    link: bool,
    monitor: bool,
    out: &mut PidText,
) -> Fast {
    use std::fmt::Write;
    let nargs = ffi::lua_gettop(state);
    let (Some(id), Some(host)) = (str_arg(state, 1), str_arg(state, 2)) else {
        return Fast::Full;
    };
    let mut args = Vec::with_capacity(nargs.saturating_sub(2) as usize);
    for idx in 3..=nargs {
        match raw_copy::value_at(state, idx) {
            Some(v) => args.push(v),
            None => return Fast::Full,
        }
    }
    let Some(ctx) = context::current() else {
        return Fast::Full;
    };
    let spawned =
        crate::lua::modules::process::spawn_checked(&ctx, id, host, args, link, monitor, PID_ROOM);
    match spawned {
        Some(pid) if write!(out, "{pid}").is_ok() => Fast::Spawned,
        // `spawn_checked` made sure the text fits.
        Some(pid) => panic!("pid {pid} longer than {PID_ROOM} bytes"),
        None => Fast::Full,
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
