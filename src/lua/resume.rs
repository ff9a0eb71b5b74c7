//! One resume of a process coroutine straight through `lua_resume`.
//!
//! Why raw: mlua's `Thread::resume` and `AsyncThread::poll` reset the stack of the thread they
//! resume, which would drop the live registers of a frame the preemption hook suspended, so
//! the runtime used to resume through Lua's own `coroutine.resume`, called from a small Lua
//! function (`worker::STEP`). That detour (a protected call, a Lua frame and the base library's
//! resume around every step) was a fifth of the instructions of a message round trip. This is
//! what `coroutine.resume` does, minus the detour: the coroutine's stack below its yielded
//! values is never touched.
//!
//! Audit: every raw call below works on two stacks, the caller's (`raw.state()`, restored to
//! its height on every path) and the coroutine's (`co.state()`), and checks space before it
//! pushes. `lua_resume` runs protected, so no Lua error can unwind through Rust here; a Rust
//! panic inside the coroutine comes back as mlua's wrapped panic and is resumed by
//! `pop_value`, as the Lua detour did.
#![allow(unsafe_code)]

use mlua::{ffi, Lua, MultiValue, Thread, Value};
use std::ffi::c_int;

/// How one resume stopped; `worker::STEP` documents the same four outcomes as codes.
#[derive(Debug)]
pub enum Stopped {
    /// Yielded mlua's pending marker alone: waiting in an async call.
    Waiting,
    /// Preempted by the hook, or a bare `coroutine.yield(...)` at the top of the body.
    Yielded,
    /// Returned; its first two results.
    Finished(Value, Value),
    /// Raised; the error value as `coroutine.resume` would return it.
    Failed(Value),
}

/// Resumes `co` once with `args` (pass `None` on every resume but the first).
pub fn resume(lua: &Lua, co: &Thread, args: Option<MultiValue>) -> mlua::Result<Stopped> {
    // SAFETY: `co` is a live thread of `lua`, kept alive by the borrow.
    unsafe { resume_state(lua, co.state(), args, 0) }
}

/// A coroutine kept alive by a Lua registry reference, resumed without an mlua handle: making
/// one per resume (a reference on mlua's auxiliary stack, made and dropped) cost about 600
/// instructions, twice per message round trip. The reference is Lua's own (`luaL_ref`), not an
/// mlua `RegistryKey`, whose protected call made and released it for ~1,400 instructions per
/// process.
pub struct HeldThread {
    /// The state whose `registry[key]` is the coroutine; released on drop.
    lua: mlua::WeakLua,
    key: c_int,
    /// The coroutine's own state: valid while `key` holds it (Lua's collector does not move
    /// objects).
    state: *mut ffi::lua_State,
}

impl HeldThread {
    /// Holds `thread`, a coroutine of `lua`.
    pub fn new(lua: &Lua, thread: Thread) -> mlua::Result<HeldThread> {
        let state = thread.state();
        let mut key = ffi::LUA_NOREF;
        // SAFETY: a protected call with the thread on its stack; `luaL_ref` pops it.
        unsafe {
            lua.exec_raw::<()>(thread, |s| key = ffi::luaL_ref(s, ffi::LUA_REGISTRYINDEX))?;
        }
        Ok(HeldThread {
            lua: lua.weak(),
            key,
            state,
        })
    }

    /// A new coroutine of `lua` whose stack `fill` sets up (the function, then the arguments of
    /// its first resume; it returns how many arguments it pushed), held like `new`.
    ///
    /// # Safety
    /// `fill` runs inside a protected call: it may raise a Lua error (then nothing is held and
    /// the error is returned), so it must hold nothing with a destructor. It checks the stack
    /// space it needs beyond `LUA_MINSTACK`.
    pub unsafe fn create(
        lua: &Lua,
        fill: impl FnOnce(*mut ffi::lua_State) -> c_int,
    ) -> mlua::Result<(HeldThread, c_int)> {
        let mut made = (ffi::LUA_NOREF, std::ptr::null_mut(), 0);
        lua.exec_raw::<()>((), |s| {
            let co = ffi::lua_newthread(s);
            let nargs = fill(co);
            made = (ffi::luaL_ref(s, ffi::LUA_REGISTRYINDEX), co, nargs);
        })?;
        let (key, state, nargs) = made;
        Ok((
            HeldThread {
                lua: lua.weak(),
                key,
                state,
            },
            nargs,
        ))
    }

    /// An mlua handle to the coroutine.
    pub fn thread(&self, lua: &Lua) -> mlua::Result<Thread> {
        lua.exec_raw_lua(|raw| unsafe {
            let s = raw.state();
            if ffi::lua_checkstack(s, 1) == 0 {
                return Err(mlua::Error::StackError);
            }
            ffi::lua_rawgeti(s, ffi::LUA_REGISTRYINDEX, self.key as ffi::lua_Integer);
            match raw.pop_value() {
                Value::Thread(t) => Ok(t),
                _ => Err(mlua::Error::runtime("process coroutine released")),
            }
        })
    }

    /// The coroutine's state, as an identity (and for `preempt::Step`).
    pub fn state(&self) -> *mut ffi::lua_State {
        self.state
    }

    /// `resume` of this coroutine; `lua` must be the state that holds it. `pushed`
    /// arguments are on its stack already (see `create`); `args` are pushed now.
    pub fn resume(
        &self,
        lua: &Lua,
        args: Option<MultiValue>,
        pushed: c_int,
    ) -> mlua::Result<Stopped> {
        if self.lua != lua.weak() {
            return Err(mlua::Error::MismatchedRegistryKey);
        }
        // SAFETY: the reference keeps the coroutine alive, and it belongs to `lua`.
        unsafe { resume_state(lua, self.state, args, pushed) }
    }
}

/// A process body ready for its first resume, built on its coroutine's own stack: `bootstrap`,
/// then `factory`, a fresh `_ENV` (`raw_push::push_env` with `env_meta`), `method` (registry
/// indices, all four) and copies of `args`, each `raw_push::pushable`. Returns the body and the
/// number of arguments its first resume passes.
pub fn body_from_factory(
    lua: &Lua,
    bootstrap: c_int,
    factory: c_int,
    env_meta: c_int,
    method: c_int,
    args: &[crate::process::value::Value],
) -> mlua::Result<(HeldThread, c_int)> {
    use crate::lua::raw_push;
    debug_assert!(args.iter().all(raw_push::pushable));
    // SAFETY: the fill holds only borrows and checks its stack space (`push`, `push_env` check
    // their own; the new coroutine has `LUA_MINSTACK` free slots for the three `rawgeti`).
    unsafe {
        HeldThread::create(lua, |co| {
            ffi::lua_rawgeti(co, ffi::LUA_REGISTRYINDEX, bootstrap as ffi::lua_Integer);
            ffi::lua_rawgeti(co, ffi::LUA_REGISTRYINDEX, factory as ffi::lua_Integer);
            raw_push::push_env(co, env_meta);
            ffi::lua_rawgeti(co, ffi::LUA_REGISTRYINDEX, method as ffi::lua_Integer);
            for a in args {
                raw_push::push(co, a);
            }
            3 + args.len() as c_int
        })
    }
}

impl Drop for HeldThread {
    fn drop(&mut self) {
        // A state already closed released everything with it.
        if let Some(lua) = self.lua.try_upgrade() {
            // SAFETY: `luaL_unref` of a reference this state made; it stores into existing
            // slots of the registry, so it neither allocates nor raises.
            lua.exec_raw_lua(|raw| unsafe {
                ffi::luaL_unref(raw.state(), ffi::LUA_REGISTRYINDEX, self.key)
            });
        }
    }
}

/// `resume` of the coroutine `thread` of `lua`, which stays alive during the call.
unsafe fn resume_state(
    lua: &Lua,
    thread: *mut ffi::lua_State,
    args: Option<MultiValue>,
    pushed: c_int,
) -> mlua::Result<Stopped> {
    let pending = Lua::poll_pending().0;
    lua.exec_raw_lua(|raw| unsafe {
        let caller = raw.state();
        let height = ffi::lua_gettop(caller);
        let nargs = match args {
            Some(args) => {
                let n = args.len() as i32;
                // `push_value` needs two slots per value; the coroutine needs `n`.
                if ffi::lua_checkstack(caller, n + 2) == 0 || ffi::lua_checkstack(thread, n) == 0 {
                    return Err(mlua::Error::StackError);
                }
                for v in args.iter() {
                    if let Err(e) = raw.push_value(v) {
                        ffi::lua_settop(caller, height);
                        return Err(e);
                    }
                }
                ffi::lua_xmove(caller, thread, n);
                n
            }
            None => 0,
        };
        let mut nresults: c_int = 0;
        let status = ffi::lua_resume(thread, caller, pushed + nargs, &mut nresults);
        let stopped = match status {
            ffi::LUA_YIELD => {
                let waiting = nresults == 1
                    && ffi::lua_type(thread, -1) == ffi::LUA_TLIGHTUSERDATA
                    && ffi::lua_touserdata(thread, -1) == pending;
                // The yielded values are the caller's to take, as `coroutine.resume` takes
                // them; nothing uses them.
                ffi::lua_pop(thread, nresults);
                if waiting {
                    Stopped::Waiting
                } else {
                    Stopped::Yielded
                }
            }
            ffi::LUA_OK => {
                let kept = nresults.min(2);
                ffi::lua_settop(thread, ffi::lua_gettop(thread) - nresults + kept);
                if ffi::lua_checkstack(caller, kept + 1) == 0 {
                    return Err(mlua::Error::StackError);
                }
                ffi::lua_xmove(thread, caller, kept);
                let second = if kept == 2 {
                    raw.pop_value()
                } else {
                    Value::Nil
                };
                let first = if kept >= 1 {
                    raw.pop_value()
                } else {
                    Value::Nil
                };
                Stopped::Finished(first, second)
            }
            _ => {
                if ffi::lua_checkstack(caller, 2) == 0 {
                    return Err(mlua::Error::StackError);
                }
                ffi::lua_xmove(thread, caller, 1);
                Stopped::Failed(raw.pop_value())
            }
        };
        ffi::lua_settop(caller, height);
        Ok(stopped)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(lua: &Lua, src: &str) -> Thread {
        lua.create_thread(lua.load(src).eval::<mlua::Function>().unwrap())
            .unwrap()
    }

    #[test]
    fn finishes_with_its_first_two_results_and_takes_arguments_once() {
        let lua = Lua::new();
        let co = thread(
            &lua,
            "return function(a, b) coroutine.yield() return a + b, 'x', 'y' end",
        );
        let args = MultiValue::from_iter([Value::Integer(2), Value::Integer(3)]);
        assert!(matches!(
            resume(&lua, &co, Some(args)).unwrap(),
            Stopped::Yielded
        ));
        match resume(&lua, &co, None).unwrap() {
            Stopped::Finished(Value::Integer(5), Value::String(s)) => assert_eq!(s, "x"),
            other => panic!("{other:?}"),
        }
        // Dead now: an error value, as coroutine.resume gives, not a crash.
        match resume(&lua, &co, None).unwrap() {
            Stopped::Failed(Value::String(s)) => {
                assert!(s.to_str().unwrap().contains("dead"), "{s:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_held_body_runs_from_its_stack_and_releases_its_registry_slot() {
        use crate::process::value::Value as Owned;
        let lua = Lua::new();
        let src = c"local a, b = ... coroutine.yield() return a + b";
        // SAFETY: the fill pushes a chunk and two numbers; it holds nothing with a destructor.
        let (held, pushed) = unsafe {
            HeldThread::create(&lua, |co| {
                assert_eq!(ffi::luaL_loadstring(co, src.as_ptr()), ffi::LUA_OK);
                crate::lua::raw_push::push(co, &Owned::Int(2));
                crate::lua::raw_push::push(co, &Owned::Int(3));
                2
            })
        }
        .unwrap();
        assert_eq!(pushed, 2);
        let key = held.key;
        assert!(matches!(
            held.resume(&lua, None, pushed).unwrap(),
            Stopped::Yielded
        ));
        // Another state's body is refused, not resumed on the wrong stack.
        assert!(held.resume(&Lua::new(), None, 0).is_err());
        match held.resume(&lua, None, 0).unwrap() {
            Stopped::Finished(Value::Integer(5), _) => {}
            other => panic!("{other:?}"),
        }
        drop(held);
        // The slot is free again: Lua's reference list hands it out next.
        let again = HeldThread::new(&lua, thread(&lua, "return function() end")).unwrap();
        assert_eq!(again.key, key);
    }

    #[test]
    fn errors_and_rust_errors_come_back_as_values() {
        let lua = Lua::new();
        let co = thread(&lua, "return function() error({code = 7}) end");
        match resume(&lua, &co, Some(MultiValue::new())).unwrap() {
            Stopped::Failed(Value::Table(t)) => assert_eq!(t.get::<i64>("code").unwrap(), 7),
            other => panic!("{other:?}"),
        }
        let fails = lua
            .create_function(|_, ()| Err::<(), _>(mlua::Error::runtime("boom")))
            .unwrap();
        let co = lua.create_thread(fails).unwrap();
        match resume(&lua, &co, Some(MultiValue::new())).unwrap() {
            Stopped::Failed(Value::Error(e)) => assert!(e.to_string().contains("boom")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_pending_marker_alone_is_a_wait_and_the_caller_stack_is_kept() {
        let lua = Lua::new();
        let co = thread(
            &lua,
            "return function(p) coroutine.yield(p) coroutine.yield(p, 1) return 'done' end",
        );
        let pending = Value::LightUserData(Lua::poll_pending());
        let args = MultiValue::from_iter([pending]);
        assert!(matches!(
            resume(&lua, &co, Some(args)).unwrap(),
            Stopped::Waiting
        ));
        assert!(matches!(resume(&lua, &co, None).unwrap(), Stopped::Yielded));
        assert!(matches!(
            resume(&lua, &co, None).unwrap(),
            Stopped::Finished(Value::String(_), Value::Nil)
        ));
        let height = lua.exec_raw_lua(|raw| unsafe { ffi::lua_gettop(raw.state()) });
        assert_eq!(height, 0);
    }

    #[test]
    fn a_frame_suspended_by_the_count_hook_keeps_its_registers() {
        let lua = Lua::new();
        let co = thread(
            &lua,
            "return function() local s = 0 for i = 1, 100000 do s = s + i end return s end",
        );
        co.set_hook(
            mlua::HookTriggers::new().every_nth_instruction(1000),
            |_, _| Ok(mlua::VmState::Yield),
        )
        .unwrap();
        let mut stopped = resume(&lua, &co, Some(MultiValue::new())).unwrap();
        let mut yields = 0;
        while let Stopped::Yielded = stopped {
            yields += 1;
            stopped = resume(&lua, &co, None).unwrap();
        }
        assert!(yields > 10, "{yields}");
        match stopped {
            Stopped::Finished(Value::Integer(s), _) => assert_eq!(s, 5_000_050_000),
            other => panic!("{other:?}"),
        }
    }
}
