//! The `coroutine` library scripts see. Scheduler waits (mlua's pending yields) raised inside a
//! script's own coroutine are passed up to the process coroutine and the inner one is resumed
//! when the wait is over, so `receive` inside `coroutine.wrap` really waits. Adds
//! `coroutine.spawn`: a coroutine run concurrently by the worker, owned by the process.
//! Also holds the driver every process coroutine runs under (preemption-safe resumes).

use crate::lua::context;
use crate::lua::runner::{LuaTask, ProcTask};
use mlua::{Function, Lua, Table};

const WRAPPER: &str = r#"
local raw, PENDING = ...
local create, resume_raw, yield, status = raw.create, raw.resume, raw.yield, raw.status
local pack, unpack = table.pack, table.unpack

local function resume(co, ...)
    local r = pack(resume_raw(co, ...))
    while r[1] and r.n == 2 and r[2] == PENDING and status(co) == "suspended" do
        local sig = pack(yield(PENDING))
        if sig.n > 0 then
            -- A terminate signal (see DRIVER): end the inner wait, then stay suspended.
            resume_raw(co, unpack(sig, 1, sig.n))
            while true do yield() end
        end
        r = pack(resume_raw(co))
    end
    return unpack(r, 1, r.n)
end

local function wrap(f)
    local co = create(f)
    return function(...)
        local r = pack(resume(co, ...))
        if not r[1] then error(r[2], 0) end
        return unpack(r, 2, r.n)
    end
end

return {
    create = create, resume = resume, wrap = wrap, yield = yield, status = status,
    running = raw.running, isyieldable = raw.isyieldable, close = raw.close,
}
"#;

/// The body of every process `AsyncThread`: `function(co, ...)` resumes `co` (the process body
/// or a `coroutine.spawn` function) with Lua's own `coroutine.resume` until it ends.
///
/// Why a separate coroutine: mlua's `AsyncThread::poll` resets the stack top of the thread it
/// resumes after each resume. That is harmless after a yield from a C function (an async
/// call's pending marker) but not after a yield from the preemption hook, where the top may
/// hold live values of the interrupted instruction (multiple results feeding a call or a
/// table constructor). Lua's `coroutine.resume` keeps a hook-suspended coroutine intact, so
/// the hook only ever yields `co`, and the driver yields on its behalf from a C call.
///
/// A dropped task must never run again (it would run with no process installed). mlua 0.11
/// does not resume threads run through `into_async` when they are dropped, but a recycled
/// thread is resumed once with a terminate signal (the only resume that passes values); should
/// that happen, the signal is handed to a waiting async call so its future is dropped, and a
/// body suspended by preemption is left alone.
const DRIVER: &str = r#"
local raw, PENDING = ...
local resume, yield, status = raw.resume, raw.yield, raw.status
local pack, unpack, error = table.pack, table.unpack, error

return function(co, ...)
    local r = pack(resume(co, ...))
    while true do
        if not r[1] then error(r[2], 0) end
        if status(co) == "dead" then return unpack(r, 2, r.n) end
        local waiting = r.n == 2 and r[2] == PENDING
        local sig
        if waiting then sig = pack(yield(PENDING)) else sig = pack(yield()) end
        if sig.n > 0 then
            if waiting then resume(co, unpack(sig, 1, sig.n)) end
            while true do yield() end
        end
        r = pack(resume(co))
    end
end
"#;

/// Builds the driver function (see `DRIVER`) for this state.
pub fn driver(lua: &Lua) -> mlua::Result<Function> {
    let raw: Table = lua.globals().raw_get("coroutine")?;
    lua.load(DRIVER)
        .set_name("=driver")
        .call((raw, mlua::Value::LightUserData(Lua::poll_pending())))
}

pub fn register(lua: &Lua, globals: &Table) -> mlua::Result<()> {
    let raw: Table = lua.globals().raw_get("coroutine")?;
    let wrapped: Table = lua
        .load(WRAPPER)
        .set_name("=coroutine")
        .call((raw, mlua::Value::LightUserData(Lua::poll_pending())))?;
    wrapped.raw_set("spawn", lua.create_function(spawn)?)?;
    globals.raw_set("coroutine", crate::lua::sandbox::read_only(lua, wrapped)?)?;
    Ok(())
}

fn spawn(lua: &Lua, f: Function) -> mlua::Result<mlua::Thread> {
    let ctx = context::require_current()?;
    let thread = lua.create_thread(f)?;
    let task = LuaTask::of_thread(thread.clone())?;
    let proc_task = ProcTask {
        ctx: ctx.clone(),
        thread: task,
        main: false,
    };
    let pid = ctx.pid().to_string();
    let handle = tokio::task::spawn_local(async move {
        if let Err(e) = proc_task.await {
            tracing::warn!(%pid, error = %crate::lua::runner::lua_error_message(&e), "spawned coroutine failed");
        }
    });
    ctx.own_task(handle.abort_handle());
    Ok(thread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::{HookTriggers, VmState};
    use std::future::Future;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs `f` as a coroutine that a count hook yields every `n` instructions, as the
    /// worker's preemption hook does (only that coroutine; hooks reach threads created after
    /// they are set, so the hook comes first).
    fn preempted_body(lua: &Lua, f: Function, n: u32) -> (mlua::Thread, Rc<AtomicUsize>) {
        let target = Rc::new(AtomicUsize::new(0));
        let yields = Rc::new(AtomicUsize::new(0));
        let (t, y) = (target.clone(), yields.clone());
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(n),
            move |lua, _| {
                if lua.current_thread().to_pointer() as usize == t.load(Ordering::Relaxed) {
                    y.fetch_add(1, Ordering::Relaxed);
                    return Ok(VmState::Yield);
                }
                Ok(VmState::Continue)
            },
        )
        .unwrap();
        let body = lua.create_thread(f).unwrap();
        target.store(body.to_pointer() as usize, Ordering::Relaxed);
        (body, yields)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn hook_yields_under_the_driver_keep_live_values() {
        // Multiple results feeding a table constructor and a call live above the frame's
        // registers; a hook yield between producing and consuming them must keep them, and the
        // GC running meanwhile must not clear anything live.
        let lua = Lua::new();
        let body_fn: Function = lua
            .load(
                r##"
                return function(n)
                    local function pick(...) return select("#", ...), ... end
                    local acc, keep = 0, {}
                    for i = 1, n do
                        local t = { i, pick(i, i + 1, i + 2) }
                        if #t ~= 5 or t[2] ~= 3 or t[5] ~= i + 2 then
                            error("corrupted at " .. i)
                        end
                        keep[i % 64 + 1] = { tostring(i), t }
                        acc = acc + select(2, pick(i))
                        if i % 50 == 0 then collectgarbage("step") end
                    end
                    return acc
                end
                "##,
            )
            .eval()
            .unwrap();
        let (body, yields) = preempted_body(&lua, body_fn, 7);
        let outer = lua.create_thread(driver(&lua).unwrap()).unwrap();
        let fut = outer.into_async::<i64>((body, 3000)).unwrap();
        let sum = runtime().block_on(fut).unwrap();
        assert_eq!(sum, (1..=3000).sum::<i64>());
        assert!(
            yields.load(Ordering::Relaxed) > 1000,
            "the hook really preempted"
        );
    }

    #[test]
    fn async_waits_pass_through_the_driver() {
        let lua = Lua::new();
        let sleep = lua
            .create_async_function(|_, ms: u64| async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                Ok(ms)
            })
            .unwrap();
        lua.globals().set("sleep", sleep).unwrap();
        let body_fn: Function = lua
            .load("return function(a) local x = sleep(5) return a + x, 'done' end")
            .eval()
            .unwrap();
        let body = lua.create_thread(body_fn).unwrap();
        let outer = lua.create_thread(driver(&lua).unwrap()).unwrap();
        let fut = outer.into_async::<(i64, String)>((body, 1)).unwrap();
        assert_eq!(runtime().block_on(fut).unwrap(), (6, "done".to_string()));
    }

    #[test]
    fn errors_propagate_through_the_driver() {
        let lua = Lua::new();
        let body_fn: Function = lua
            .load("return function() error('boom', 0) end")
            .eval()
            .unwrap();
        let body = lua.create_thread(body_fn).unwrap();
        let outer = lua.create_thread(driver(&lua).unwrap()).unwrap();
        let err = runtime()
            .block_on(outer.into_async::<()>(body).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn a_dropped_preempted_task_never_runs_again() {
        let lua = Lua::new();
        lua.globals().set("count", 0).unwrap();
        let body_fn: Function = lua
            .load("return function() while true do count = count + 1 end end")
            .eval()
            .unwrap();
        let (body, _) = preempted_body(&lua, body_fn, 50);
        let outer = lua.create_thread(driver(&lua).unwrap()).unwrap();
        let mut fut = Box::pin(outer.into_async::<()>(body).unwrap());
        let rt = runtime();
        rt.block_on(async {
            for _ in 0..10 {
                let polled =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
                assert!(polled.is_pending());
            }
        });
        let before: i64 = lua.globals().get("count").unwrap();
        assert!(before > 0);
        drop(fut);
        let after: i64 = lua.globals().get("count").unwrap();
        assert_eq!(before, after, "the body ran while its task was dropped");
    }
}
