//! The `coroutine` library scripts see. Scheduler waits (mlua's pending yields) raised inside a
//! script's own coroutine are passed up to the process coroutine and the inner one is resumed
//! when the wait is over, so `receive` inside `coroutine.wrap` really waits. Adds
//! `coroutine.spawn`: a coroutine run concurrently by the worker, owned by the process.

use crate::lua::context;
use crate::lua::runner::{LuaTask, ProcTask};
use mlua::{Function, Lua, Table};

const WRAPPER: &str = r#"
local raw, PENDING, hook_every = ...
local create_raw, resume_raw, yield, status = raw.create, raw.resume, raw.yield, raw.status
local pack, unpack = table.pack, table.unpack

-- The scheduler preempts process bodies on demand; a script's own coroutine is watched by a
-- periodic hook instead (preempt.rs).
local function create(f)
    if type(f) ~= "function" then
        error("bad argument #1 to 'create' (function expected, got " .. type(f) .. ")", 2)
    end
    local co = create_raw(f)
    hook_every(co)
    return co
end

local function resume(co, ...)
    local r = pack(resume_raw(co, ...))
    while r[1] and r.n == 2 and r[2] == PENDING and status(co) == "suspended" do
        local sig = pack(yield(PENDING))
        if sig.n > 0 then
            -- A terminate signal (a recycled thread resumed with values): end the inner wait,
            -- then stay suspended.
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

pub fn register(lua: &Lua, globals: &Table) -> mlua::Result<()> {
    let raw: Table = lua.globals().raw_get("coroutine")?;
    let wrapped: Table = lua.load(WRAPPER).set_name("=coroutine").call((
        raw,
        mlua::Value::LightUserData(Lua::poll_pending()),
        lua.create_function(|_, co: mlua::Thread| {
            crate::lua::preempt::hook_every(&co);
            Ok(())
        })?,
    ))?;
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
