//! One Lua state per worker thread: the sandboxed base globals every process `_ENV` inherits
//! from, the per-worker module tables, and the preemption hook.

use crate::lua::context;
use crate::lua::sandbox::read_only;
use mlua::{Function, HookTriggers, Lua, StdLib, Table, VmState};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// How long one poll may run before the hook yields it back to the worker's queue.
pub const TIME_SLICE: Duration = Duration::from_millis(5);
/// How long one poll of a process may run when the hook cannot yield it (inside a C boundary
/// such as a `table.sort` comparator, or in a script's own coroutine) before it is stopped
/// with an error. Bounds how long such a loop can hold its worker.
///
/// Yielding from the hook is safe because every process body runs in an inner coroutine that
/// Lua's own `coroutine.resume` drives (see `coroutine::driver`): mlua's `AsyncThread::poll`
/// resets the stack top of the coroutine it resumes, which would drop the live registers of a
/// frame suspended by a hook, but it only ever sees the driver, never the hooked coroutine.
pub const RUN_BUDGET: Duration = Duration::from_millis(500);
/// A process preempted continuously for this long is logged once as a runaway.
pub const RUNAWAY_WARN_AFTER: Duration = Duration::from_millis(500);
const HOOK_EVERY: u32 = 20_000;

pub struct WorkerLua {
    pub lua: Lua,
    /// Metatable of every process `_ENV`: `__index` = the shared read-only globals.
    pub env_meta: Table,
    /// Thread body `function(chunk, env, method, ...)`: runs the chunk, finds `method`, calls it.
    pub bootstrap: Function,
    /// `function(co, ...)`: resumes `co` until it ends, passing scheduler waits and preemption
    /// yields up (the body every `AsyncThread` runs; see `coroutine::driver`).
    pub driver: Function,
    modules: RefCell<HashMap<String, Table>>,
    /// Imported tables by entry, with the compile version they came from: a reload replaces
    /// the entry's table instead of growing the map.
    imports: RefCell<HashMap<crate::registry::kinds::EntryId, (u64, Table)>>,
}

thread_local! {
    static WORKER: RefCell<Option<Rc<WorkerLua>>> = const { RefCell::new(None) };
}

/// This thread's Lua state, created on first use.
pub fn worker_lua() -> Rc<WorkerLua> {
    WORKER.with(|w| {
        if let Some(existing) = w.borrow().as_ref() {
            return existing.clone();
        }
        let created = Rc::new(WorkerLua::new().expect("create worker Lua state"));
        *w.borrow_mut() = Some(created.clone());
        created
    })
}

impl WorkerLua {
    fn new() -> mlua::Result<WorkerLua> {
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::COROUTINE | StdLib::OS,
            mlua::LuaOptions::default(),
        )?;
        let g = lua.globals();
        let base = lua.create_table()?;
        for name in [
            "assert",
            "error",
            "pcall",
            "xpcall",
            "type",
            "tostring",
            "tonumber",
            "pairs",
            "ipairs",
            "next",
            "select",
            "getmetatable",
            "setmetatable",
            "rawget",
            "rawset",
            "rawequal",
            "_VERSION",
        ] {
            base.raw_set(name, g.raw_get::<mlua::Value>(name)?)?;
        }
        let string: Table = g.raw_get("string")?;
        let table: Table = g.raw_get("table")?;
        let math: Table = g.raw_get("math")?;
        base.raw_set("unpack", table.raw_get::<mlua::Value>("unpack")?)?;
        let string_ro = read_only(&lua, string.clone())?;
        base.raw_set("string", string_ro.clone())?;
        base.raw_set("table", read_only(&lua, table)?)?;
        base.raw_set("math", read_only(&lua, math)?)?;
        // The real string metatable's __index is the shared `string` table; scripts only ever
        // see a stand-in whose __index is the read-only proxy.
        let string_meta_view = lua.create_table()?;
        string_meta_view.raw_set("__index", string_ro)?;
        let real_getmetatable: Function = g.raw_get("getmetatable")?;
        base.raw_set(
            "getmetatable",
            lua.create_function(move |_, v: mlua::Value| match v {
                mlua::Value::String(_) => Ok(mlua::Value::Table(string_meta_view.clone())),
                other => real_getmetatable.call::<mlua::Value>(other),
            })?,
        )?;

        let os: Table = g.raw_get("os")?;
        let os_limited = lua.create_table()?;
        for name in ["time", "date", "clock", "difftime"] {
            os_limited.raw_set(name, os.raw_get::<mlua::Value>(name)?)?;
        }
        os_limited.raw_set("platform", "wippy")?;
        base.raw_set("os", read_only(&lua, os_limited)?)?;

        base.raw_set(
            "print",
            lua.create_function(|_, args: mlua::Variadic<mlua::Value>| {
                let line = args
                    .iter()
                    .map(|v| v.to_string().unwrap_or_else(|_| format!("{v:?}")))
                    .collect::<Vec<_>>()
                    .join("\t");
                match context::current_labels() {
                    Some((pid, entry)) => tracing::info!(target: "lua", pid, entry, "{line}"),
                    None => tracing::info!(target: "lua", "{line}"),
                }
                Ok(())
            })?,
        )?;
        base.raw_set("require", lua.create_function(require)?)?;
        base.raw_set("rawset", crate::lua::sandbox::guarded_rawset(&lua)?)?;
        crate::lua::errors::register(&lua, &base)?;
        crate::lua::channel::register(&lua, &base)?;
        crate::lua::coroutine::register(&lua, &base)?;
        let driver = crate::lua::coroutine::driver(&lua)?;
        crate::lua::modules::process::register(&lua, &base)?;

        let env_meta = lua.create_table()?;
        env_meta.raw_set("__index", base)?;
        env_meta.raw_set("__metatable", false)?;

        let bootstrap: Function = lua
            .load(
                r#"
                return function(chunk, env, method, ...)
                    local mod = chunk()
                    local f
                    if type(mod) == "table" then f = mod[method] end
                    if f == nil then f = rawget(env, method) end
                    if type(f) ~= "function" then
                        error("method '" .. tostring(method) .. "' not found in module", 0)
                    end
                    return f(...)
                end
                "#,
            )
            .set_name("=bootstrap")
            .eval()?;

        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            preemption_hook,
        )?;

        // Drop what the sandbox does not offer from the real globals too, so nothing leaks
        // through a shared function's environment.
        for name in [
            "load",
            "loadstring",
            "loadfile",
            "dofile",
            "collectgarbage",
            "require",
            "package",
            "io",
            "debug",
        ] {
            g.raw_set(name, mlua::Value::Nil)?;
        }

        Ok(WorkerLua {
            lua,
            env_meta,
            bootstrap,
            driver,
            modules: RefCell::new(HashMap::new()),
            imports: RefCell::new(HashMap::new()),
        })
    }

    /// A fresh `_ENV` for one process or call.
    pub fn new_env(&self) -> mlua::Result<Table> {
        let env = self.lua.create_table()?;
        env.set_metatable(Some(self.env_meta.clone()))?;
        env.raw_set("_G", env.clone())?;
        Ok(env)
    }

    /// The table an imported entry's chunk returns (read-only), run once per worker and code
    /// version.
    pub fn import(&self, code: &crate::lua::compile::CompiledCode) -> mlua::Result<Table> {
        if let Some((version, t)) = self.imports.borrow().get(&code.entry) {
            if *version == code.version {
                return Ok(t.clone());
            }
        }
        let table: Table = self
            .lua
            .load(&code.bytecode[..])
            .set_mode(mlua::ChunkMode::Binary)
            .set_name(format!("@{}", code.chunk_name))
            .set_environment(self.new_env()?)
            .call(())?;
        // Every process on this worker gets this one table: read-only like module tables
        // (§2.2), or a write by one process would be seen by the others.
        let table = read_only(&self.lua, table)?;
        self.imports
            .borrow_mut()
            .insert(code.entry.clone(), (code.version, table.clone()));
        Ok(table)
    }

    /// The module table for `name`, built once per worker and shared read-only.
    pub fn module(&self, name: &str) -> mlua::Result<Option<Table>> {
        if let Some(t) = self.modules.borrow().get(name) {
            return Ok(Some(t.clone()));
        }
        let lua = &self.lua;
        let Some(table) = crate::lua::modules::load(lua, name)? else {
            return Ok(None);
        };
        let table = read_only(lua, table)?;
        self.modules
            .borrow_mut()
            .insert(name.to_string(), table.clone());
        Ok(Some(table))
    }
}

fn require(_lua: &Lua, name: String) -> mlua::Result<Table> {
    let ctx = context::require_current()?;
    if ctx.code.modules.iter().any(|m| m == &name) {
        if let Some(t) = worker_lua().module(&name)? {
            return Ok(t);
        }
    }
    if let Some(target) = ctx.code.imports.get(&name) {
        return crate::lua::runner::load_import(&ctx, target);
    }
    Err(mlua::Error::runtime(format!(
        "module not available: {name}"
    )))
}

fn preemption_hook(lua: &Lua, _debug: &mlua::Debug) -> mlua::Result<VmState> {
    let Some(ctx) = context::current() else {
        return Ok(VmState::Continue);
    };
    let elapsed = ctx.slice_start.get().elapsed();
    if elapsed < TIME_SLICE {
        return Ok(VmState::Continue);
    }
    // Only the process body the scheduler is polling may yield; a script's own coroutine
    // would receive the yield as a bogus value.
    let is_body = lua.current_thread().to_pointer() == ctx.running_thread.get();
    // The budget applies only where yielding is impossible: in a script's own coroutine, or
    // when a yield asked for earlier in this poll was skipped (Lua cannot yield across some C
    // boundaries, and mlua then ignores the request). A body that was merely descheduled by
    // the OS for a long time still just yields.
    if elapsed > RUN_BUDGET && (!is_body || ctx.preempted.get()) {
        let (entry, pid) = (ctx.code.entry.to_string(), ctx.pid().to_string());
        if !ctx.budget_logged.replace(true) {
            tracing::error!(%entry, %pid, budget_ms = RUN_BUDGET.as_millis() as u64,
                "process ran past its budget without waiting; stopping it");
        }
        return Err(mlua::Error::runtime(format!(
            "process {pid} ({entry}) ran for more than {} ms without waiting",
            RUN_BUDGET.as_millis()
        )));
    }
    if !is_body {
        return Ok(VmState::Continue);
    }
    ctx.preempted.set(true);
    let busy_since = ctx
        .busy_since
        .get()
        .unwrap_or_else(|| ctx.slice_start.get());
    ctx.busy_since.set(Some(busy_since));
    if busy_since.elapsed() >= RUNAWAY_WARN_AFTER && !ctx.runaway_logged.replace(true) {
        tracing::warn!(entry = %ctx.code.entry, pid = %ctx.pid(),
            busy_ms = busy_since.elapsed().as_millis() as u64,
            "process keeps running without waiting; preempting it every {} ms", TIME_SLICE.as_millis());
    }
    Ok(VmState::Yield)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::kinds::{EntryId, LuaCode};

    #[test]
    fn imported_tables_are_shared_read_only() {
        let w = WorkerLua::new().unwrap();
        let code = crate::lua::compile::compile(
            &EntryId::new("t", "lib"),
            &LuaCode {
                source: "return { tag = 'v1' }".into(),
                chunk_name: "lib.lua".into(),
                method: "run".into(),
                modules: vec![],
                imports: Default::default(),
            },
            false,
        )
        .unwrap();
        let a = w.import(&code).unwrap();
        let b = w.import(&code).unwrap();
        assert_eq!(a, b, "one table per worker and version");
        assert_eq!(a.get::<String>("tag").unwrap(), "v1");
        assert!(a.set("tag", "changed").is_err(), "writes are refused");
        assert_eq!(b.get::<String>("tag").unwrap(), "v1");
    }
}
