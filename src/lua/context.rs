//! The running process or request on this worker thread, as the module bindings see it.
//!
//! A worker runs one Lua coroutine at a time; the process future installs its context before
//! each poll, so bindings find "who am I" without per-process closures.

use crate::lua::channel::{ChanCore, Item};
use crate::lua::compile::CompiledCode;
use crate::process::pid::{Event, ExitResult, Pid, Signal};
use crate::process::table::ProcessEntry;
use crate::registry::kinds::EntryId;
use crate::runtime::Node;
use crate::security::SecurityContext;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Default, Debug)]
pub struct ProcOptions {
    pub trap_links: bool,
    pub upgradable: bool,
}

pub struct Listener {
    pub pattern: String,
    pub core: Rc<ChanCore>,
    /// Deliver Message objects instead of raw payload values.
    pub as_message: bool,
}

/// One running process (or one HTTP handler call, with an ephemeral pid).
pub struct ProcCtx {
    pub node: Arc<Node>,
    pub proc: Arc<ProcessEntry>,
    pub code: Arc<CompiledCode>,
    pub security: RefCell<Arc<SecurityContext>>,
    /// Created on first use (see `inbox()` / `events()`): many processes never get an event.
    inbox: std::cell::OnceCell<Rc<ChanCore>>,
    events: std::cell::OnceCell<Rc<ChanCore>>,
    /// The channel objects `process.inbox()` / `events()` hand out.
    pub inbox_ud: RefCell<Option<ChannelObject>>,
    pub events_ud: RefCell<Option<ChannelObject>>,
    pub listeners: RefCell<Vec<Listener>>,
    pub options: Cell<ProcOptions>,
    tasks: RefCell<Vec<tokio::task::AbortHandle>>,
    /// When the current poll started (the preemption hook measures from here).
    pub slice_start: Cell<Instant>,
    /// The process body coroutine being polled now: the only one the hook may yield.
    pub running_thread: Cell<*const std::ffi::c_void>,
    /// Set by the hook when it preempted the current poll (as opposed to a real wait).
    pub preempted: Cell<bool>,
    /// The waker of the task polling this process now: synchronous waits (`receive`,
    /// `select`) register it where they wait, instead of going through an mlua async call.
    pub poll_waker: RefCell<Option<std::task::Waker>>,
    /// Set by a synchronous wait that registered `poll_waker` during the current poll.
    pub wait_armed: Cell<bool>,
    /// Since when the process has run without a real wait (preempted polls only).
    pub busy_since: Cell<Option<Instant>>,
    /// Whether this busy streak was already logged as a runaway.
    pub runaway_logged: Cell<bool>,
    /// Whether the run-budget error was already logged (a script may catch it and go on).
    pub budget_logged: Cell<bool>,
    pub kill: RefCell<Option<String>>,
    /// Set for `function.lua` calls made by the HTTP server.
    pub http: Option<Rc<crate::lua::modules::http::HttpFrame>>,
    /// A pending `process.upgrade` request: (entry, args).
    pub upgrade: RefCell<Option<(EntryId, Vec<crate::process::value::Value>)>>,
    /// What this process's Lua heap is charged to, when its entry has `max_memory`.
    pub memory: Option<Rc<crate::lua::memory::MemoryAccount>>,
}

impl ProcCtx {
    pub fn new(
        node: Arc<Node>,
        proc: Arc<ProcessEntry>,
        code: Arc<CompiledCode>,
        security: Arc<SecurityContext>,
        http: Option<Rc<crate::lua::modules::http::HttpFrame>>,
    ) -> Rc<ProcCtx> {
        let code_cap = code.max_memory;
        Rc::new(ProcCtx {
            node,
            proc,
            code,
            security: RefCell::new(security),
            inbox: std::cell::OnceCell::new(),
            events: std::cell::OnceCell::new(),
            inbox_ud: RefCell::new(None),
            events_ud: RefCell::new(None),
            listeners: RefCell::new(Vec::new()),
            options: Cell::new(ProcOptions::default()),
            tasks: RefCell::new(Vec::new()),
            slice_start: Cell::new(Instant::now()),
            running_thread: Cell::new(std::ptr::null()),
            preempted: Cell::new(false),
            poll_waker: RefCell::new(None),
            wait_armed: Cell::new(false),
            busy_since: Cell::new(None),
            runaway_logged: Cell::new(false),
            budget_logged: Cell::new(false),
            kill: RefCell::new(None),
            http,
            upgrade: RefCell::new(None),
            memory: memory_account(code_cap),
        })
    }

    /// The same process continuing on new code (`process.upgrade`): pid, mailbox, queued
    /// messages and security context carry over; options, listeners and channels do not.
    pub fn upgraded(old: &Rc<ProcCtx>, code: Arc<CompiledCode>) -> Rc<ProcCtx> {
        let code_cap = code.max_memory;
        old.proc.set_entry(Arc::from(code.entry.to_string()));
        old.proc
            .upgradable
            .store(false, std::sync::atomic::Ordering::Relaxed);
        Rc::new(ProcCtx {
            node: old.node.clone(),
            proc: old.proc.clone(),
            code,
            security: RefCell::new(old.security.borrow().clone()),
            inbox: old.inbox.clone(),
            events: old.events.clone(),
            inbox_ud: RefCell::new(None),
            events_ud: RefCell::new(None),
            listeners: RefCell::new(Vec::new()),
            options: Cell::new(ProcOptions::default()),
            tasks: RefCell::new(Vec::new()),
            slice_start: Cell::new(Instant::now()),
            running_thread: Cell::new(std::ptr::null()),
            preempted: Cell::new(false),
            poll_waker: RefCell::new(None),
            wait_armed: Cell::new(false),
            busy_since: Cell::new(None),
            runaway_logged: Cell::new(false),
            budget_logged: Cell::new(false),
            kill: RefCell::new(None),
            http: None,
            upgrade: RefCell::new(None),
            memory: memory_account(code_cap),
        })
    }

    /// The channel the mailbox pump fills with messages no listener takes.
    pub fn inbox(&self) -> &Rc<ChanCore> {
        self.inbox.get_or_init(|| ChanCore::new(None))
    }

    /// The channel the mailbox pump fills with events (EXIT, LINK_DOWN, CANCEL ...).
    pub fn events(&self) -> &Rc<ChanCore> {
        self.events.get_or_init(|| ChanCore::new(None))
    }

    pub fn pid(&self) -> &Pid {
        &self.proc.pid
    }

    pub fn namespace(&self) -> &str {
        &self.code.entry.namespace
    }

    /// Ties a helper task (timer, spawned coroutine) to this process's lifetime.
    pub fn own_task(&self, handle: tokio::task::AbortHandle) {
        let mut tasks = self.tasks.borrow_mut();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    pub fn abort_tasks(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// Moves everything from the mailbox into the process's channels. A link failure kills the
    /// process unless it traps links.
    pub fn pump(&self) {
        self.pump_for(None);
    }

    /// `pump` run by the task `current` right before it polls the process's coroutine: the
    /// whole mailbox moves over under one lock, and `current` is not woken for what it is
    /// about to see anyway.
    pub fn pump_for(&self, current: Option<&std::task::Waker>) {
        thread_local! {
            static SCRATCH: RefCell<VecDeque<Signal>> = const { RefCell::new(VecDeque::new()) };
        }
        SCRATCH.with(|scratch| {
            // A nested pump (not expected) falls back to a fresh buffer.
            let mut own = VecDeque::new();
            let mut borrowed = scratch.try_borrow_mut();
            let batch = match borrowed.as_deref_mut() {
                Ok(b) => b,
                Err(_) => &mut own,
            };
            // Never hand one process's leftovers (after a panic mid-delivery) to another.
            batch.clear();
            if let Some(reason) = self.proc.mailbox.take_all(batch) {
                self.kill.borrow_mut().get_or_insert(reason);
            }
            while let Some(signal) = batch.pop_front() {
                self.deliver(signal, current);
            }
        });
    }

    fn deliver(&self, signal: Signal, current: Option<&std::task::Waker>) {
        match signal {
            Signal::Message(msg) => self.route(msg, current),
            Signal::Event(Event::LinkDown { from, error }) => {
                if self.options.get().trap_links {
                    self.events()
                        .push_from(Item::Event(Event::LinkDown { from, error }), current);
                } else {
                    self.kill
                        .borrow_mut()
                        .get_or_insert_with(|| "linked process failed".to_string());
                }
            }
            // Only processes that opted in hear about new code (§10.2).
            Signal::Event(Event::Outdated { .. }) if !self.options.get().upgradable => {}
            Signal::Event(Event::Outdated { sources }) => self.events().push_outdated(sources),
            Signal::Event(ev) => self.events().push_from(Item::Event(ev), current),
        }
    }

    fn route(&self, msg: crate::process::pid::Message, current: Option<&std::task::Waker>) {
        let listeners = self.listeners.borrow();
        for l in listeners.iter() {
            if topic_matches(&l.pattern, &msg.topic) {
                if l.as_message {
                    l.core.push_from(Item::Message(msg), current);
                } else {
                    let v = msg
                        .payloads
                        .into_iter()
                        .next()
                        .unwrap_or(crate::process::value::Value::Nil);
                    l.core.push_from(Item::Value(v), current);
                }
                return;
            }
        }
        drop(listeners);
        self.inbox().push_from(Item::Message(msg), current);
    }

    pub fn exit_result_event(from: Pid, result: ExitResult) -> Event {
        Event::Exit { from, result }
    }
}

/// Glob match for `listen` topics: `*` matches any run of characters.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    crate::lua::modules::process::glob(pattern, topic)
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<ProcCtx>>> = const { RefCell::new(None) };
}

/// A channel object a process handed out: kept in the Lua registry (see `LuaTask::body` for
/// why not as an mlua reference) and, while kept, entered by its address in the fast receive
/// table (`fast_receive.rs`).
pub struct ChannelObject {
    pub key: mlua::RegistryKey,
    pub addr: usize,
}

impl Drop for ProcCtx {
    /// Releases the process's registry slots now: a dropped `RegistryKey` alone keeps its
    /// value alive until mlua reuses the slot, which a burst of exits would turn into memory
    /// held for nothing. Keys its tasks and channels dropped earlier are released with them.
    fn drop(&mut self) {
        let objects = [self.inbox_ud.take(), self.events_ud.take()];
        // Out of the fast table first: an address there must never outlive its registry key.
        for object in objects.iter().flatten() {
            crate::lua::fast_receive::remove(object.addr);
        }
        let Some(w) = crate::lua::worker::try_worker_lua() else {
            return;
        };
        for object in objects.into_iter().flatten() {
            let _ = w.lua.remove_registry_value(object.key);
        }
        w.lua.expire_registry_values();
    }
}

/// A fresh account for an entry with `max_memory` (installing the capping allocator on this
/// worker's state the first time).
fn memory_account(cap: Option<usize>) -> Option<Rc<crate::lua::memory::MemoryAccount>> {
    let limit = cap?;
    crate::lua::memory::install(&crate::lua::worker::worker_lua().lua);
    Some(crate::lua::memory::MemoryAccount::new(limit))
}

/// Installs `ctx` as current for the duration of `f` (one poll of its coroutine); what Lua
/// allocates meanwhile is charged to its memory account, if it has one.
pub fn enter<R>(ctx: &Rc<ProcCtx>, f: impl FnOnce() -> R) -> R {
    let prev = CURRENT.with(|c| c.replace(Some(ctx.clone())));
    struct Restore(Option<Rc<ProcCtx>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let _restore = Restore(prev);
    crate::lua::memory::charged(ctx.memory.as_ref(), f)
}

pub fn current() -> Option<Rc<ProcCtx>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` with the current context, if there is one.
pub fn with_current<R>(f: impl FnOnce(&ProcCtx) -> R) -> Option<R> {
    CURRENT.with(|c| c.borrow().as_ref().map(|ctx| f(ctx)))
}

/// The current context or a Lua error (bindings that make no sense outside a process).
pub fn require_current() -> mlua::Result<Rc<ProcCtx>> {
    current().ok_or_else(|| mlua::Error::runtime("not running inside a process"))
}

/// `(pid, entry id)` of the code running now, for log lines.
pub fn current_labels() -> Option<(String, String)> {
    with_current(|c| (c.pid().to_string(), c.code.entry.to_string()))
}

/// Runtime permission check in the current security context (§7.3).
pub fn allowed(action: &str, resource: &str) -> bool {
    allowed_with_meta(action, resource, &serde_json::Value::Null)
}

/// The decision when no policy needs evaluating (no actor or no scope): `Some(!strict)`.
/// Hot paths call this first so they build resource strings and meta only when needed.
pub fn decided_without_policies() -> Option<bool> {
    with_current(|c| {
        let sec = c.security.borrow();
        (sec.actor.is_none() || sec.scope.is_none()).then_some(!c.node.strict_mode)
    })
    .unwrap_or(Some(true))
}

pub fn allowed_with_meta(action: &str, resource: &str, meta: &serde_json::Value) -> bool {
    // Most calls have nothing to evaluate: then the pid meta below is not built.
    if let Some(decision) = decided_without_policies() {
        return decision;
    }
    with_current(|c| {
        let meta = if meta.is_null() {
            serde_json::json!({"pid": c.pid().to_string()})
        } else {
            meta.clone()
        };
        c.security
            .borrow()
            .allowed(action, resource, &meta, c.node.strict_mode)
    })
    .unwrap_or(true)
}

/// The running SQLite database entry `id`, if any.
pub fn lookup_db(id: &EntryId) -> Option<Arc<crate::store::sqlite::Sqlite>> {
    with_current(|c| c.node.db(id)).flatten()
}

/// The namespace of the entry whose code is running (bare references resolve in it).
pub fn current_namespace() -> String {
    with_current(|c| c.namespace().to_string()).unwrap_or_default()
}

/// The security context (actor, scope) of the code running now.
pub fn security() -> Arc<SecurityContext> {
    with_current(|c| c.security.borrow().clone()).unwrap_or_default()
}

/// Policies and groups of the current registry.
pub fn policies() -> Arc<crate::security::PolicySet> {
    with_current(|c| c.node.snapshot().policies.clone()).unwrap_or_default()
}

/// Whether strict mode is on (§7.1).
pub fn strict_mode() -> bool {
    with_current(|c| c.node.strict_mode).unwrap_or(false)
}

/// The running `security.token_store` entry `id`, if any.
pub fn lookup_token_store(id: &EntryId) -> Option<Arc<crate::security::token::TokenStore>> {
    with_current(|c| c.node.token_store(id)).flatten()
}

/// The running `store.memory` entry `id`, if any.
pub fn lookup_memory_store(id: &EntryId) -> Option<Arc<crate::store::memory::MemoryStore>> {
    with_current(|c| c.node.memory_store(id)).flatten()
}
