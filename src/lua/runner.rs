//! Runs `process.lua` entries as green processes: one coroutine per process on its worker's
//! Lua state, polled as a local task. Every exit path (return, error, kill, panic, drop) ends in
//! `ProcessTable::exit`, so links and monitors always fire.

use crate::lua::compile::CompiledCode;
use crate::lua::context::{self, ProcCtx};
use crate::lua::resume::Stopped;
use crate::lua::worker::worker_lua;
use crate::lua::{convert, raw_push};
use crate::process::pid::{ExitResult, Message, Pid};
use crate::process::scheduler::{panic_message, Placement, StartTicket};
use crate::process::value::{ErrorKind, ErrorValue, Value};
use crate::registry::kinds::EntryId;
use crate::runtime::Node;
use crate::security::SecurityContext;
use mlua::{ChunkMode, MultiValue};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Raised inside Lua by `process.upgrade` to unwind the old code; never seen by scripts.
pub const UPGRADE_SENTINEL: &str = "\u{0}moonwire-upgrade";

#[derive(Default)]
pub struct SpawnOptions {
    pub link_to: Option<Pid>,
    pub monitor_by: Option<Pid>,
    pub name: Option<String>,
    pub messages: Vec<Message>,
    pub on_exit: Option<tokio::sync::oneshot::Sender<ExitResult>>,
}

/// Starts a Lua process on `host`. Links, monitors and the name are in place before the
/// process can run, so no exit is missed.
pub fn spawn_process(
    node: &Arc<Node>,
    code: Arc<CompiledCode>,
    host: &EntryId,
    args: Vec<Value>,
    security: Arc<SecurityContext>,
    opts: SpawnOptions,
) -> Result<Pid, ErrorValue> {
    if !node.host_running(host) {
        return Err(ErrorValue::new(
            ErrorKind::Unavailable,
            format!("process host {host} is not running"),
        ));
    }
    let (host_label, entry_label) = labels(host, &code);
    let proc = node.procs.register(host_label, entry_label);
    let pid = proc.pid.clone();
    if let Some(name) = &opts.name {
        if let Err(e) = node.procs.register_name(name, &pid) {
            node.procs.exit(&pid, ExitResult::Error(e.to_string()));
            return Err(ErrorValue::new(ErrorKind::AlreadyExists, e.to_string()));
        }
    }
    if let Some(parent) = &opts.link_to {
        node.procs.link(parent, &pid);
    }
    if let Some(watcher) = &opts.monitor_by {
        node.procs.monitor(watcher, &pid);
    }
    for m in opts.messages {
        proc.mailbox.push(crate::process::pid::Signal::Message(m));
    }
    let node2 = node.clone();
    let on_exit = opts.on_exit;
    let start = move |ticket: Option<StartTicket>| {
        let ctx = ProcCtx::new(node2, proc, code, security, None);
        tokio::task::spawn_local(run(ctx, args, on_exit, ticket));
    };
    match node.scheduler.place_spawn() {
        // Spawned from a worker and staying: start right here, without boxing a job.
        Some(Placement::Here(ticket)) => start(Some(ticket)),
        Some(Placement::On(worker, ticket)) => node
            .scheduler
            .submit_start(worker, Box::new(move || start(Some(ticket)))),
        None => node.scheduler.submit(Box::new(move || start(None))),
    }
    Ok(pid)
}

/// The host and entry labels of a new process, shared between the processes a worker spawns
/// from the same entry instead of formatted and allocated for each.
fn labels(host: &EntryId, code: &CompiledCode) -> (&'static str, Arc<str>) {
    type Cached = Option<(EntryId, &'static str, u64, Arc<str>)>;
    thread_local! {
        static LAST: std::cell::RefCell<Cached> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &mut *last {
            Some((h, hl, v, el)) if h == host => {
                if *v != code.version {
                    *v = code.version;
                    *el = Arc::from(code.entry.to_string());
                }
                (*hl, el.clone())
            }
            _ => {
                let hl = crate::process::pid::intern_label(&host.to_string());
                let el: Arc<str> = Arc::from(code.entry.to_string());
                *last = Some((host.clone(), hl, code.version, el.clone()));
                (hl, el)
            }
        }
    })
}

async fn run(
    mut ctx: Rc<ProcCtx>,
    mut args: Vec<Value>,
    on_exit: Option<tokio::sync::oneshot::Sender<ExitResult>>,
    ticket: Option<StartTicket>,
) {
    // Started: no longer counted as waiting on this worker (see `Scheduler::place_spawn`).
    drop(ticket);
    let mut guard = ExitGuard {
        node: ctx.node.clone(),
        pid: ctx.pid().clone(),
        done: false,
    };
    let result = loop {
        let result = run_code(&ctx, std::mem::take(&mut args)).await;
        ctx.abort_tasks();
        let upgrade = ctx.upgrade.borrow_mut().take();
        match upgrade {
            Some((entry, new_args)) => match ctx.node.code(&entry).filter(|c| c.is_process) {
                Some(code) => {
                    tracing::info!(pid = %ctx.pid(), entry = %entry, "process upgraded");
                    ctx = ProcCtx::upgraded(&ctx, code);
                    args = new_args;
                }
                None => {
                    break ExitResult::Error(format!(
                        "upgrade failed: {entry} is not a process.lua entry"
                    ))
                }
            },
            None => break result,
        }
    };
    if let ExitResult::Error(e) = &result {
        if e != "terminated" && !e.starts_with("service stopping") {
            tracing::warn!(pid = %ctx.pid(), entry = %ctx.code.entry, error = %e, "process failed");
        }
    }
    guard.done = true;
    ctx.node.procs.exit(ctx.pid(), result.clone());
    if let Some(tx) = on_exit {
        let _ = tx.send(result);
    }
}

/// Ends the process if its task is dropped without finishing (worker shutdown).
struct ExitGuard {
    node: Arc<Node>,
    pid: Pid,
    done: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if !self.done {
            self.node
                .procs
                .exit(&self.pid, ExitResult::Error("terminated".into()));
        }
    }
}

/// Instantiates the entry's chunk in a fresh `_ENV` and runs `method(args...)` to completion.
pub(crate) async fn run_code(ctx: &Rc<ProcCtx>, args: Vec<Value>) -> ExitResult {
    let thread = match prepare(ctx, args) {
        Ok(t) => t,
        Err(e) => return ExitResult::Error(lua_error_message(&e)),
    };
    match (ProcTask {
        ctx: ctx.clone(),
        thread,
        main: true,
    })
    .await
    {
        Ok(values) => result_from_returns(values),
        Err(e) => {
            if ctx.upgrade.borrow().is_some() {
                return ExitResult::Error("upgrading".into());
            }
            if let Some(reason) = ctx.kill.borrow().clone() {
                return ExitResult::Error(reason);
            }
            if let Some(account) = ctx.memory.as_ref().filter(|_| is_memory_error(&e)) {
                return ExitResult::Error(format!(
                    "memory limit exceeded: {} may hold at most {} bytes of Lua memory (max_memory)",
                    ctx.code.entry,
                    account.limit()
                ));
            }
            ExitResult::Error(lua_error_message(&e))
        }
    }
}

fn prepare(ctx: &Rc<ProcCtx>, args: Vec<Value>) -> mlua::Result<LuaTask> {
    let w = worker_lua();
    let lua = &w.lua;
    // Built on the coroutine's stack without an mlua value per part; arguments `raw_push`
    // cannot push (error objects) go with the first resume instead.
    if let Some(f) = w.factory(&ctx.node, &ctx.code) {
        let raw = args.iter().all(raw_push::pushable);
        let ((bootstrap, env_meta), (function, method)) = (w.body_ids(), f.registry_ids());
        let pushed_args: &[Value] = if raw { &args } else { &[] };
        let (body, pushed) = crate::lua::resume::body_from_factory(
            lua,
            bootstrap,
            function,
            env_meta,
            method,
            pushed_args,
        )?;
        let later = if raw {
            None
        } else {
            Some(
                args.iter()
                    .map(|a| convert::to_lua(lua, a))
                    .collect::<mlua::Result<MultiValue>>()?,
            )
        };
        return Ok(LuaTask::new(body, later, pushed));
    }
    let env = w.new_env()?;
    let chunk = lua
        .load(&ctx.code.bytecode[..])
        .set_mode(ChunkMode::Binary)
        .set_name(format!("@{}", ctx.code.chunk_name))
        .set_environment(env.clone())
        .into_function()?;
    let (body, method) = (
        lua.create_thread(w.bootstrap.clone())?,
        lua.create_string(&ctx.code.method)?,
    );
    let mut call_args = MultiValue::with_capacity(3 + args.len());
    call_args.push_back(mlua::Value::Function(chunk));
    call_args.push_back(mlua::Value::Table(env));
    call_args.push_back(mlua::Value::String(method));
    for a in &args {
        call_args.push_back(convert::to_lua(lua, a)?);
    }
    LuaTask::driven(body, call_args)
}

/// A process coroutine (or a `coroutine.spawn` function) run one step per poll through the
/// worker's `step` (see `worker::STEP`): Lua's own `coroutine.resume` drives it, so the
/// preemption hook may yield it safely, and no driver coroutine is kept per process.
pub struct LuaTask {
    /// The coroutine the script runs in: the one the preemption hook may yield. Kept in the Lua
    /// registry, not as an mlua reference: mlua keeps its references on one auxiliary Lua stack
    /// of at most a million slots per state, which capped a worker at ~500,000 idle processes.
    body: crate::lua::resume::HeldThread,
    /// Arguments of the first resume: pushed then, and already on the body's stack.
    args: Option<MultiValue>,
    pushed: std::ffi::c_int,
    /// Whether `body` is suspended in an async call (dropping the task then ends that call).
    waiting: bool,
    /// After a preemption: a `yield_now` to finish before the body runs again.
    yielding: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

impl LuaTask {
    /// `body` run with `args` on its first resume.
    fn driven(body: mlua::Thread, args: MultiValue) -> mlua::Result<LuaTask> {
        let body = crate::lua::resume::HeldThread::new(&worker_lua().lua, body)?;
        Ok(LuaTask::new(body, Some(args), 0))
    }

    fn new(
        body: crate::lua::resume::HeldThread,
        args: Option<MultiValue>,
        pushed: std::ffi::c_int,
    ) -> LuaTask {
        LuaTask {
            body,
            args,
            pushed,
            waiting: false,
            yielding: None,
        }
    }

    /// An existing coroutine run as a task (for `coroutine.spawn`).
    pub fn of_thread(thread: mlua::Thread) -> mlua::Result<LuaTask> {
        LuaTask::driven(thread, MultiValue::new())
    }

    fn body(&self) -> mlua::Result<mlua::Thread> {
        self.body.thread(&worker_lua().lua)
    }
}

impl Drop for LuaTask {
    fn drop(&mut self) {
        // As mlua does for a dropped async thread: end the pending call now (its future may
        // hold a timer, a socket or a pool slot), and never run the body again.
        if self.waiting {
            if let Some(w) = crate::lua::worker::try_worker_lua() {
                if let Ok(body) = self.body.thread(&w.lua) {
                    w.terminate_wait(&body);
                }
            }
        }
    }
}

/// A step's failure value as an error (what raising it out of the driver used to give).
fn step_error(v: mlua::Value) -> mlua::Error {
    match v {
        mlua::Value::Error(e) => *e,
        mlua::Value::String(s) => mlua::Error::RuntimeError(s.to_string_lossy()),
        other => {
            mlua::Error::RuntimeError(other.to_string().unwrap_or_else(|_| format!("{other:?}")))
        }
    }
}

/// Polls one Lua coroutine of a process with the process context installed, pumping the
/// mailbox first so messages, events and kills are seen.
pub struct ProcTask {
    pub ctx: Rc<ProcCtx>,
    pub thread: LuaTask,
    /// The main coroutine; only its end ends the process.
    pub main: bool,
}

impl Future for ProcTask {
    type Output = mlua::Result<MultiValue>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(y) = this.thread.yielding.as_mut() {
            if y.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.thread.yielding = None;
        }
        let ctx = this.ctx.clone();
        ctx.pump_for(Some(cx.waker()));
        if let Some(reason) = ctx.kill.borrow().clone() {
            return Poll::Ready(Err(mlua::Error::runtime(reason)));
        }
        let task = &mut this.thread;
        {
            let mut waker = ctx.poll_waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        ctx.wait_armed.set(false);
        let polled = context::enter(&ctx, || {
            ctx.slice_start.set(std::time::Instant::now());
            ctx.running_thread
                .set(task.body.state().cast_const().cast());
            ctx.preempted.set(false);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                task.waiting = false;
                let w = worker_lua();
                let _step = crate::lua::preempt::Step::begin_held(&task.body);
                let mut step =
                    task.body
                        .resume(&w.lua, task.args.take(), std::mem::take(&mut task.pushed));
                if matches!(step, Ok(Stopped::Waiting)) && !ctx.wait_armed.get() {
                    step = match task.body() {
                        Ok(body) => w.run_step(&body, cx),
                        Err(e) => Err(e),
                    };
                }
                match step {
                    Ok(Stopped::Waiting) => {
                        task.waiting = true;
                        Poll::Pending
                    }
                    Ok(Stopped::Yielded) => {
                        // Preempted (or a bare `coroutine.yield()`): run again soon.
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Ok(Stopped::Finished(a, b)) => Poll::Ready(Ok(MultiValue::from_iter([a, b]))),
                    Ok(Stopped::Failed(err)) => Poll::Ready(Err(step_error(err))),
                    Err(e) => Poll::Ready(Err(e)),
                }
            }))
        });
        match polled {
            Ok(Poll::Pending) => {
                if ctx.preempted.get() {
                    // mlua re-wakes a yielded thread at once, and the worker's LocalSet would
                    // poll it again up to 61 times before the runtime turns its timer and I/O
                    // drivers (~300 ms of a runaway); `yield_now` defers the next poll until
                    // after that turn, so sleeping neighbours wake on time.
                    this.thread.yielding = Some(Box::pin(tokio::task::yield_now()));
                } else {
                    // A real wait ends a busy streak.
                    ctx.busy_since.set(None);
                    ctx.runaway_logged.set(false);
                }
                if !ctx.proc.mailbox.register(cx.waker()) {
                    cx.waker().wake_by_ref();
                }
                if ctx.kill.borrow().is_some() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            Ok(ready) => ready,
            Err(panic) => {
                let msg = panic_message(&panic);
                tracing::error!(pid = %ctx.pid(), entry = %ctx.code.entry, panic = %msg, "panic inside a process");
                Poll::Ready(Err(mlua::Error::runtime(format!("panic: {msg}"))))
            }
        }
    }
}

/// `return v` ⇒ success; `return v, err` with a non-nil err ⇒ failure.
fn result_from_returns(values: MultiValue) -> ExitResult {
    let mut it = values.into_iter();
    let first = it.next().unwrap_or(mlua::Value::Nil);
    let second = it.next().unwrap_or(mlua::Value::Nil);
    match second {
        // A result nobody can receive (a function, a cycle) is a failure, not a silent nil.
        mlua::Value::Nil | mlua::Value::Boolean(false) => match convert::from_lua(&first) {
            Ok(v) => ExitResult::Value(v),
            Err(e) => ExitResult::Error(format!("invalid return value: {}", e.message)),
        },
        err => ExitResult::Error(value_message(&err)),
    }
}

/// The text of an error value: error objects give their message, strings themselves.
pub fn value_message(v: &mlua::Value) -> String {
    if let Some(e) = crate::lua::errors::as_error_value(v) {
        return e.message.clone();
    }
    match v {
        mlua::Value::String(s) => s.to_string_lossy(),
        other => other.to_string().unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// Whether `e` is Lua's allocation failure, however it travelled: mlua's `MemoryError`, or the
/// "not enough memory" value a failed `coroutine.resume` hands back as a plain error.
fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_memory_error(cause)
        }
        other => lua_error_message(other) == "not enough memory",
    }
}

/// A Lua error as one line of text for EXIT results and logs (traceback dropped).
pub fn lua_error_message(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, .. } => return lua_error_message(cause),
        mlua::Error::WithContext { cause, .. } => return lua_error_message(cause),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::ExternalError(ext) => ext.to_string(),
        other => other.to_string(),
    };
    text.split("\nstack traceback:")
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// `require` of an `imports` alias: the imported entry's chunk, run once per worker state.
pub fn load_import(ctx: &ProcCtx, target: &EntryId) -> mlua::Result<mlua::Table> {
    let code = ctx
        .node
        .code(target)
        .ok_or_else(|| mlua::Error::runtime(format!("import {target} not found")))?;
    crate::lua::worker::worker_lua().import(&code)
}

/// Runs `id` to completion and returns its result (`process.exec`).
pub async fn exec(
    node: &Arc<Node>,
    code: Arc<CompiledCode>,
    host: &EntryId,
    args: Vec<Value>,
    security: Arc<SecurityContext>,
) -> Result<ExitResult, ErrorValue> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_process(
        node,
        code,
        host,
        args,
        security,
        SpawnOptions {
            on_exit: Some(tx),
            ..Default::default()
        },
    )?;
    rx.await
        .map_err(|_| ErrorValue::new(ErrorKind::Internal, "process vanished"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::pid::{Event, Signal};
    use crate::registry::kinds::LuaCode;
    use crate::runtime::{Resources, Snapshot};
    use std::time::{Duration, Instant};

    fn node_with_host(host: &EntryId) -> Arc<Node> {
        let mut resources = Resources::default();
        resources.running_hosts.insert(host.clone());
        Arc::new(Node {
            procs: Arc::new(crate::process::table::ProcessTable::default()),
            scheduler: crate::process::scheduler::Scheduler::start(
                crate::process::scheduler::Pools {
                    connection_workers: 1,
                    process_workers: 0,
                },
            ),
            snapshot: std::sync::RwLock::new(Arc::new(Snapshot {
                registry: Arc::new(crate::registry::Registry::default()),
                code: Default::default(),
                policies: Default::default(),
            })),
            resources: std::sync::RwLock::new(resources),
            project_root: std::env::temp_dir(),
            strict_mode: false,
        })
    }

    fn events_of(entry: &crate::process::table::ProcessEntry, want: usize) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            match entry.mailbox.pop() {
                Some(Signal::Event(e)) => got.push(e),
                Some(Signal::Message(_)) => {}
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        got
    }

    /// A compiled `process.lua` entry `t:<name>` with a `main` method.
    fn process_code(name: &str, source: &str) -> Arc<CompiledCode> {
        crate::lua::compile::compile(
            &EntryId::new("t", name),
            &LuaCode {
                source: source.into(),
                chunk_name: format!("{name}.lua"),
                method: "main".into(),
                modules: vec![],
                imports: Default::default(),
                max_memory: None,
            },
            true,
        )
        .unwrap()
    }

    /// `f`'s answer, run on worker 0.
    fn on_worker<R: Send + 'static>(node: &Arc<Node>, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        node.scheduler
            .submit_to(0, Box::new(move || tx.send(f()).unwrap()));
        rx.recv_timeout(Duration::from_secs(5)).unwrap()
    }

    /// The worker's Lua heap after two full collections.
    fn worker_heap(node: &Arc<Node>) -> usize {
        on_worker(node, || {
            let lua = &worker_lua().lua;
            lua.gc_collect().unwrap();
            lua.gc_collect().unwrap();
            lua.used_memory()
        })
    }

    fn fast_channels(node: &Arc<Node>) -> usize {
        on_worker(node, crate::lua::fast_receive::entered)
    }

    #[test]
    fn exited_processes_leave_nothing_in_the_lua_registry() {
        let host = EntryId::new("t", "host");
        let node = node_with_host(&host);
        let code = process_code(
            "idle",
            "return { main = function() process.inbox():receive() end }",
        );
        let spawn_all = |n: usize| -> Vec<Pid> {
            (0..n)
                .map(|_| {
                    spawn_process(
                        &node,
                        code.clone(),
                        &host,
                        vec![],
                        Arc::new(SecurityContext::default()),
                        SpawnOptions::default(),
                    )
                    .unwrap()
                })
                .collect()
        };
        let wait_alive = |want: usize| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while node.procs.alive() != want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(node.procs.alive(), want);
        };
        // Warm-up: the worker's state, its module tables and registry size.
        for p in spawn_all(100) {
            node.procs.get(p.id()).unwrap().mailbox.kill("stop");
        }
        wait_alive(0);
        let before = worker_heap(&node);
        // 5,000 live processes, each with its coroutine and its inbox object in the registry,
        // all ended together: nothing may keep them reachable afterwards.
        let pids = spawn_all(5000);
        wait_alive(5000);
        // Each inbox is in the fast receive table while its process lives, and only then.
        let deadline = Instant::now() + Duration::from_secs(20);
        while fast_channels(&node) < 5000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(fast_channels(&node), 5000);
        let with_them = worker_heap(&node);
        for p in &pids {
            node.procs.get(p.id()).unwrap().mailbox.kill("stop");
        }
        wait_alive(0);
        let after = worker_heap(&node);
        assert_eq!(fast_channels(&node), 0);
        assert!(
            with_them > before + 5000 * 500,
            "the live processes should show: {before} → {with_them}"
        );
        // What stays is the state's own growth (registry and reference tables), under 100
        // bytes a process; a leak keeps the ~800 bytes each process held.
        assert!(
            after < before + 5000 * 100,
            "their memory should be released: {before} → {with_them} → {after}"
        );
    }

    #[test]
    fn a_rust_panic_in_a_binding_still_fires_monitors_and_links() {
        let host = EntryId::new("t", "host");
        let node = node_with_host(&host);
        // A binding that panics, visible to scripts on the (single) worker.
        on_worker(&node, || {
            let w = worker_lua();
            let base: mlua::Table = w.env_meta.raw_get("__index").unwrap();
            let f = w
                .lua
                .create_function(|_, ()| -> mlua::Result<()> { panic!("binding bug") })
                .unwrap();
            base.raw_set("test_panic", f).unwrap();
        });
        let code = process_code("panicky", "return { main = function() test_panic() end }");
        let watcher = node.procs.register("t:host", Arc::from("t:watcher"));
        let pid = spawn_process(
            &node,
            code,
            &host,
            vec![],
            Arc::new(SecurityContext::default()),
            SpawnOptions {
                link_to: Some(watcher.pid.clone()),
                monitor_by: Some(watcher.pid.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let events = events_of(&watcher, 2);
        let exit = events.iter().find_map(|e| match e {
            Event::Exit {
                from,
                result: ExitResult::Error(msg),
            } if *from == pid => Some(msg.clone()),
            _ => None,
        });
        let down = events.iter().find_map(|e| match e {
            Event::LinkDown { from, error } if *from == pid => Some(error.clone()),
            _ => None,
        });
        assert!(
            exit.as_deref().is_some_and(|m| m.contains("binding bug")),
            "EXIT: {events:?}"
        );
        assert!(
            down.as_deref().is_some_and(|m| m.contains("binding bug")),
            "LINK_DOWN: {events:?}"
        );
        assert!(node.procs.get(pid.id()).is_none(), "the process is gone");
    }
}
