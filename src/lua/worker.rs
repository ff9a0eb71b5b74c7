//! One Lua state per worker thread: the sandboxed base globals every process `_ENV` inherits
//! from, the per-worker module tables, and the preemption hook.

use crate::lua::context;
use crate::lua::resume::Stopped;
use crate::lua::sandbox::read_only;
use mlua::{Function, HookTriggers, Lua, StdLib, Table, VmState};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::rc::Rc;
use std::time::Duration;

/// How long one poll may run before the hook yields it back to the worker's queue.
pub const TIME_SLICE: Duration = Duration::from_millis(5);
/// How long one poll of a process may run when the hook cannot yield it (inside a C boundary
/// such as a `table.sort` comparator, or in a script's own coroutine) before it is stopped
/// with an error. Bounds how long such a loop can hold its worker.
///
/// Yielding from the hook is safe because every process body is resumed with `lua_resume`
/// directly (`resume.rs`) or by Lua's own `coroutine.resume` (see `STEP`): mlua's
/// `AsyncThread::poll` resets the stack top of the coroutine it resumes, which would drop the
/// live registers of a frame suspended by a hook, but it only ever sees the step, never the
/// hooked coroutine.
pub const RUN_BUDGET: Duration = Duration::from_millis(500);
/// A process preempted continuously for this long is logged once as a runaway.
pub const RUNAWAY_WARN_AFTER: Duration = Duration::from_millis(500);

pub struct WorkerLua {
    pub lua: Lua,
    /// Metatable of every process `_ENV`: `__index` = the shared read-only globals.
    pub env_meta: Table,
    /// `env_meta` in the registry, for `raw_push::push_env`.
    env_meta_key: mlua::RegistryKey,
    /// `function(factory, env, method, ...)`, the chunk factory's counterpart of `bootstrap`
    /// (see `Factory`), in the registry for `resume::body_from_factory`.
    bootstrap_env_key: mlua::RegistryKey,
    /// Thread body `function(chunk, env, method, ...)`: runs the chunk, finds `method`, calls it.
    pub bootstrap: Function,
    /// `function(co, ...)`: resumes `co` once and says how it stopped (see `STEP`).
    step: Function,
    /// Lua's raw `coroutine.resume` (ends a wait on drop, see `terminate_wait`).
    raw_resume: Function,
    /// mlua's signal that ends a pending async call (see `capture_terminate`).
    terminate: mlua::Value,
    modules: RefCell<HashMap<String, Table>>,
    /// Imported tables by entry, with the compile version they came from: a reload replaces
    /// the entry's table instead of growing the map.
    imports: RefCell<HashMap<crate::registry::kinds::EntryId, (u64, Table)>>,
    /// Chunk factories by code version (`None`: the source was not usable; load bytecode).
    factories: RefCell<HashMap<u64, Option<Rc<Factory>>>>,
}
/// An entry's source compiled once per worker as `function(_ENV, ...) <source> end`.
///
/// Why: instantiating a process from bytecode re-reads the whole chunk (prototypes, constants,
/// debug info: the largest part of a spawn). Calling the factory with a fresh `_ENV` runs the
/// same chunk body with its own chunk-level locals, so processes still share nothing, while
/// the prototypes are shared. Line numbers are unchanged: the prefix sits on line 1.
pub struct Factory {
    entry: crate::registry::kinds::EntryId,
    /// The factory function and the entry's method name (a Lua string made once), in the
    /// registry, for pushing onto a new coroutine's stack (`resume::body_from_factory`).
    keys: (mlua::RegistryKey, mlua::RegistryKey),
}

impl Factory {
    /// The registry indices of the factory function and the method name.
    pub fn registry_ids(&self) -> (c_int, c_int) {
        (self.keys.0.id(), self.keys.1.id())
    }
}

thread_local! {
    static WORKER: RefCell<Option<Rc<WorkerLua>>> = const { RefCell::new(None) };
}

/// One resume of a process coroutine, returning how it stopped: `0` waiting in an async call
/// (its waker is registered), `1` preempted by the hook or a bare `coroutine.yield()` (run
/// again), `2, a, b` finished with results `a, b` (all that is used of them), `3, err` failed.
///
/// Why: mlua's `AsyncThread::poll` resets the stack top of the thread it resumes, which would
/// drop the live registers of a frame the preemption hook suspended; Lua's own
/// `coroutine.resume` keeps them. Running this step on a short-lived thread per poll (see
/// `WorkerLua::run_step`) instead of a driver coroutine per process saves that coroutine's
/// memory (~0.8 KB of every idle process) and allocates no tables per resume. Only the async
/// path (`run_step`) still runs this; the direct path does the same in Rust (`resume.rs`).
const STEP: &str = r##"
local coroutine, PENDING = ...
local resume, status, select = coroutine.resume, coroutine.status, select
local function stopped(co, ok, a, ...)
    if not ok then return 3, a end
    if status(co) == "dead" then return 2, a, (...) end
    if a == PENDING and select("#", ...) == 0 then return 0 end
    return 1
end
return function(co, ...)
    return stopped(co, resume(co, ...))
end
"##;

/// mlua's terminate signal: the value it resumes a dropped async thread with, so a pending
/// async call drops its future. Only mlua can produce it, so it is caught once here, from a
/// thread dropped while it waits; `LuaTask`'s drop hands it to a waiting process coroutine.
fn capture_terminate(lua: &Lua) -> mlua::Result<mlua::Value> {
    let caught = Rc::new(RefCell::new(mlua::Value::Nil));
    let sink = caught.clone();
    let stash = lua.create_function(move |_, v: mlua::Value| {
        *sink.borrow_mut() = v;
        Ok(())
    })?;
    let catcher: Function = lua
        .load("local stash, yield = ... return function() stash(yield()) end")
        .call((
            stash,
            lua.globals()
                .raw_get::<Table>("coroutine")?
                .raw_get::<Function>("yield")?,
        ))?;
    let mut fut = Box::pin(catcher.call_async::<()>(()));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if std::future::Future::poll(fut.as_mut(), &mut cx).is_ready() {
        return Err(mlua::Error::runtime(
            "terminate signal: catcher did not wait",
        ));
    }
    drop(fut);
    let v = caught.borrow().clone();
    if v.is_nil() {
        return Err(mlua::Error::runtime("terminate signal not caught"));
    }
    Ok(v)
}

/// This thread's Lua state, if it has one and it is not being torn down.
pub fn try_worker_lua() -> Option<Rc<WorkerLua>> {
    WORKER
        .try_with(|w| w.try_borrow().ok().and_then(|w| w.clone()))
        .ok()
        .flatten()
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
        let raw_coroutine: Table = g.raw_get("coroutine")?;
        let step: Function = lua.load(STEP).set_name("=step").call((
            raw_coroutine.clone(),
            mlua::Value::LightUserData(Lua::poll_pending()),
        ))?;
        let raw_resume: Function = raw_coroutine.raw_get("resume")?;
        let terminate = capture_terminate(&lua)?;
        crate::lua::modules::process::register(&lua, &base)?;

        let env_meta = lua.create_table()?;
        env_meta.raw_set("__index", base)?;
        env_meta.raw_set("__metatable", false)?;

        let bootstrap_src = r#"
                return function(chunk, env, method, ...)
                    local mod = chunk(ARGS)
                    local f
                    if type(mod) == "table" then f = mod[method] end
                    if f == nil then f = rawget(env, method) end
                    if type(f) ~= "function" then
                        error("method '" .. tostring(method) .. "' not found in module", 0)
                    end
                    return f(...)
                end
                "#;
        let bootstrap: Function = lua
            .load(bootstrap_src.replace("ARGS", ""))
            .set_name("=bootstrap")
            .eval()?;
        let bootstrap_env: Function = lua
            .load(bootstrap_src.replace("ARGS", "env"))
            .set_name("=bootstrap")
            .eval()?;

        // Generational collection: almost everything a process allocates (received messages,
        // their userdata, result tables) dies young. In incremental mode with Lua's default
        // pacing, measured in the ping-pong benchmark, that garbage (userdata with finalizers,
        // collected a cycle late) outran the collector: the state grew by ~160 bytes per
        // message without bound. Generational mode kept it at ~1 MB at the same speed.
        lua.gc_gen(0, 0);
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(crate::lua::preempt::HOOK_EVERY as u32),
            preemption_hook,
        )?;
        // Bodies run without it (`preempt.rs`); the watchdog arms them with this procedure.
        let noop: Function = lua.load("return function() end").eval()?;
        crate::lua::preempt::remember_hook(&lua.create_thread(noop)?);

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
            env_meta_key: lua.create_registry_value(env_meta.clone())?,
            bootstrap_env_key: lua.create_registry_value(bootstrap_env)?,
            lua,
            env_meta,
            bootstrap,
            step,
            raw_resume,
            terminate,
            modules: RefCell::new(HashMap::new()),
            imports: RefCell::new(HashMap::new()),
            factories: RefCell::new(HashMap::new()),
        })
    }

    /// Resumes `co` once through `step`, polling that with the task's context so an mlua async
    /// call `co` stopped in gets the task's waker. The cheaper raw resume (`resume::HeldThread`, no
    /// thread, future or Lua frame per poll) polls such a call with a no-op waker, so its
    /// `Waiting` is a real wait only when a synchronous wait armed it (`ProcCtx::wait_armed`);
    /// otherwise the poll is finished here.
    pub fn run_step(
        &self,
        co: &mlua::Thread,
        cx: &mut std::task::Context<'_>,
    ) -> mlua::Result<Stopped> {
        // A fresh thread per step. Reusing one (a finished thread reset, as mlua's thread pool
        // does, or one stepper coroutine suspended between steps) was measured to make the
        // incremental GC fall behind here: collectable garbage grew by ~300 bytes per message.
        let runner = self.lua.create_thread(self.step.clone())?;
        let mut fut = runner.into_async::<(i64, mlua::Value, mlua::Value)>(co.clone())?;
        let (code, a, b) = match std::future::Future::poll(std::pin::Pin::new(&mut fut), cx) {
            std::task::Poll::Ready(r) => r?,
            // Only `co` can wait or be preempted; the step itself never yields.
            std::task::Poll::Pending => {
                return Err(mlua::Error::runtime("process step did not finish"))
            }
        };
        Ok(match code {
            0 => Stopped::Waiting,
            1 => Stopped::Yielded,
            2 => Stopped::Finished(a, b),
            _ => Stopped::Failed(a),
        })
    }

    /// Ends the async call `co` is waiting in (its future is dropped now rather than when the
    /// coroutine is collected); `co` stays suspended and never runs again.
    pub fn terminate_wait(&self, co: &mlua::Thread) {
        let _ = self
            .raw_resume
            .call::<mlua::MultiValue>((co.clone(), self.terminate.clone()));
    }

    /// A fresh `_ENV` for one process or call.
    pub fn new_env(&self) -> mlua::Result<Table> {
        crate::lua::raw_push::new_env(&self.lua, &self.env_meta_key)
    }

    /// The registry indices of `bootstrap_env` and `env_meta`, for
    /// `resume::body_from_factory`.
    pub fn body_ids(&self) -> (c_int, c_int) {
        (self.bootstrap_env_key.id(), self.env_meta_key.id())
    }

    /// The chunk factory of `code` (see `Factory`), compiled on first use; `None` when the
    /// registry no longer holds the source of exactly this code version, or it does not
    /// compile wrapped (then the caller loads the bytecode as before).
    pub fn factory(
        &self,
        node: &crate::runtime::Node,
        code: &crate::lua::compile::CompiledCode,
    ) -> Option<Rc<Factory>> {
        if let Some(f) = self.factories.borrow().get(&code.version) {
            return f.clone();
        }
        let built = self.build_factory(node, code);
        let mut factories = self.factories.borrow_mut();
        // Older versions of the same entry are not spawned again after a reload.
        factories.retain(|_, f| f.as_ref().is_none_or(|f| f.entry != code.entry));
        factories.insert(code.version, built.clone());
        built
    }

    fn build_factory(
        &self,
        node: &crate::runtime::Node,
        code: &crate::lua::compile::CompiledCode,
    ) -> Option<Rc<Factory>> {
        use crate::registry::kinds::EntryKind;
        let snapshot = node.snapshot();
        if snapshot.code.get(&code.entry).map(|c| c.version) != Some(code.version) {
            return None;
        }
        let source = match &snapshot.registry.get(&code.entry)?.kind {
            EntryKind::LuaProcess(c) | EntryKind::LuaFunction(c) => &c.source,
            _ => return None,
        };
        let wrapped = format!("return function(_ENV, ...) {source}\nend");
        let function = self
            .lua
            .load(wrapped)
            .set_name(format!("@{}", code.chunk_name))
            .eval::<Function>()
            .ok()?;
        let method = self.lua.create_string(&code.method).ok()?;
        let keys = (
            self.lua.create_registry_value(function).ok()?,
            self.lua.create_registry_value(method).ok()?,
        );
        Some(Rc::new(Factory {
            entry: code.entry.clone(),
            keys,
        }))
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
    let thread = lua.current_thread();
    crate::lua::preempt::settle(&thread);
    let Some(ctx) = context::current() else {
        return Ok(VmState::Continue);
    };
    let elapsed = ctx.slice_start.get().elapsed();
    if elapsed < TIME_SLICE {
        return Ok(VmState::Continue);
    }
    // Only the process body the scheduler is polling may yield; a script's own coroutine
    // would receive the yield as a bogus value.
    let is_body = thread.to_pointer() == ctx.running_thread.get();
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
                max_memory: None,
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
