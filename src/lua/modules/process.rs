//! The `process` global (§3): identity, messaging, spawning, links and monitors, options, the
//! inbox/events/listen channels, upgrade, the name registry; plus Payload objects and the
//! `payload` global (received messages are `lua/message.rs`).

use crate::lua::channel::{ChanCore, Channel};
use crate::lua::context::{self, Listener, ProcCtx};
use crate::lua::convert;
use crate::lua::errors::{fail, fail_false, ok};
use crate::lua::runner::{self, SpawnOptions, UPGRADE_SENTINEL};
use crate::process::pid::{Event, ExitResult, Message, Pid};
use crate::process::value::{ErrorKind, Value};
use crate::registry::kinds::EntryId;
use mlua::{AnyUserData, Lua, Table, UserData, UserDataMethods, Variadic};
use std::sync::Arc;

type LuaPair = (mlua::Value, mlua::Value);

pub const EXIT: &str = "pid.exit";
pub const LINK_DOWN: &str = "pid.link.down";
pub const CANCEL: &str = "pid.cancel";
pub const OUTDATED: &str = "pid.outdated";

/// One payload value; `:data()` gives a fresh copy each call.
#[derive(Clone)]
pub struct Payload(pub Value);

impl UserData for Payload {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("data", |lua, this, ()| {
            ok(lua, convert::to_lua(lua, &this.0)?)
        });
        methods.add_method("get_format", |_, _, ()| Ok("lua"));
    }
}

pub fn event_to_lua(lua: &Lua, e: &Event) -> mlua::Result<mlua::Value> {
    let t = lua.create_table()?;
    match e {
        Event::Exit { from, result } => {
            t.set("kind", EXIT)?;
            t.set("from", from.to_string())?;
            t.set("result", result_table(lua, result)?)?;
        }
        Event::LinkDown { from, error } => {
            t.set("kind", LINK_DOWN)?;
            t.set("from", from.to_string())?;
            let r = lua.create_table()?;
            r.set("error", error.as_str())?;
            t.set("result", r)?;
        }
        Event::Cancel { from, reason } => {
            t.set("kind", CANCEL)?;
            t.set("from", from.as_ref().map(|p| p.to_string()))?;
            t.set("reason", reason.as_str())?;
        }
        Event::Outdated { sources } => {
            t.set("kind", OUTDATED)?;
            t.set("sources", sources.clone())?;
        }
    }
    Ok(mlua::Value::Table(t))
}

fn result_table(lua: &Lua, r: &ExitResult) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    match r {
        ExitResult::Value(v) => t.set("value", convert::to_lua(lua, v)?)?,
        ExitResult::Error(e) => t.set("error", e.as_str())?,
    }
    Ok(t)
}

/// `*` matches any run of characters; everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// A message payload from a Lua argument (`payload.new` objects pass through).
pub fn payload_value(
    lua: &Lua,
    v: &mlua::Value,
) -> Result<Value, crate::process::value::ErrorValue> {
    if let mlua::Value::UserData(ud) = v {
        if let Ok(p) = ud.borrow::<Payload>() {
            return Ok(p.0.clone());
        }
        // A one-payload message passed on as its own payload (see `lua/message.rs`).
        if let Some(only) = crate::lua::message::single_payload(lua, v) {
            return Ok(only);
        }
    }
    convert::from_lua_in(lua, v)
}

fn dest_arg(v: &mlua::Value) -> mlua::Result<String> {
    match v {
        mlua::Value::String(s) => Ok(s.to_str()?.to_string()),
        mlua::Value::Nil => Err(mlua::Error::runtime("destination required")),
        other => Ok(other.to_string()?),
    }
}

enum Resolved {
    Pid(Pid),
    Missing(String),
}

fn resolve(ctx: &ProcCtx, dest: &str) -> Resolved {
    match ctx.node.procs.resolve(dest) {
        Some(pid) => Resolved::Pid(pid),
        None => Resolved::Missing(if dest.starts_with('{') {
            format!("invalid pid {dest}")
        } else {
            format!("no process registered as {dest}")
        }),
    }
}

fn pid_meta(ctx: &ProcCtx) -> serde_json::Value {
    serde_json::json!({"pid": ctx.pid().to_string()})
}

/// Runs `f` on a string argument without copying it out of Lua. Anything but a UTF-8 string
/// goes through mlua's own `String` conversion, so coercions and errors stay exactly those
/// of a `String` parameter (`bad argument #pos: ...`).
fn with_str_arg<R>(
    lua: &Lua,
    pos: usize,
    v: &mlua::Value,
    f: impl FnOnce(&str) -> R,
) -> mlua::Result<R> {
    if let mlua::Value::String(s) = v {
        if let Ok(borrowed) = s.to_str() {
            return Ok(f(&borrowed));
        }
    }
    match <String as mlua::FromLua>::from_lua(v.clone(), lua) {
        Ok(owned) => Ok(f(&owned)),
        // mlua's error type fixes `Arc` here; it never leaves this thread.
        #[allow(clippy::arc_with_non_send_sync)]
        Err(cause) => Err(mlua::Error::BadArgument {
            to: None,
            pos,
            name: None,
            cause: Arc::new(cause),
        }),
    }
}

/// The `Arc<str>` of a message topic. Senders repeat a handful of topics, so recent ones are
/// shared instead of allocating one per message.
fn topic_arc(topic: &str) -> Arc<str> {
    const SLOTS: usize = 8;
    thread_local! {
        static RECENT: std::cell::RefCell<(usize, Vec<Arc<str>>)> =
            const { std::cell::RefCell::new((0, Vec::new())) };
    }
    RECENT.with(|r| {
        let mut r = r.borrow_mut();
        if let Some(hit) = r.1.iter().find(|t| &***t == topic) {
            return hit.clone();
        }
        let arc: Arc<str> = Arc::from(topic);
        let (next, slots) = &mut *r;
        if slots.len() < SLOTS {
            slots.push(arc.clone());
        } else {
            slots[*next] = arc.clone();
            *next = (*next + 1) % SLOTS;
        }
        arc
    })
}

/// The interned topic, or `None` for a reserved `@` topic.
fn sendable_topic(lua: &Lua, topic: &mlua::Value) -> mlua::Result<Option<Arc<str>>> {
    with_str_arg(lua, 2, topic, |t| {
        (!t.starts_with('@')).then(|| topic_arc(t))
    })
}

type Found = (Pid, Option<Arc<crate::process::table::ProcessEntry>>);

/// One table lookup resolves a destination value and finds its mailbox; `Ok(Err(m))` is the
/// NOT_FOUND message, `Err` a destination that is not a string at all.
fn resolve_dest(ctx: &ProcCtx, dest: &mlua::Value) -> mlua::Result<Result<Found, String>> {
    with_dest(dest, |d| resolve_entry(ctx, d))
}

/// `f` on a destination's string form, borrowed when the value is a Lua string (the common
/// case: no copy); `Err` for a value that is not a destination at all.
fn with_dest<R>(dest: &mlua::Value, f: impl FnOnce(&str) -> R) -> mlua::Result<R> {
    if let mlua::Value::String(s) = dest {
        if let Ok(d) = s.to_str() {
            return Ok(f(&d));
        }
    }
    Ok(f(&dest_arg(dest)?))
}

/// `process.send @ pid` in the caller's context; `meta` is built once per call site.
fn send_allowed(ctx: &ProcCtx, pid: &Pid, meta: &mut Option<serde_json::Value>) -> bool {
    context::decided_without_policies().unwrap_or_else(|| {
        let meta = meta.get_or_insert_with(|| pid_meta(ctx));
        context::allowed_with_meta("process.send", &pid.to_string(), meta)
    })
}

/// Queues the message; a dead target drops it, as `ProcessTable::send` would.
fn deliver(
    ctx: &ProcCtx,
    target: Option<Arc<crate::process::table::ProcessEntry>>,
    topic: Arc<str>,
    payloads: Vec<Value>,
) {
    if let Some(target) = target {
        target
            .mailbox
            .push(crate::process::pid::Signal::Message(Message {
                from: Some(ctx.pid().clone()),
                topic,
                payloads,
            }));
    }
}

/// The payloads of a send as owned values, or the error `send` reports.
fn message_values(
    lua: &Lua,
    payloads: &Variadic<mlua::Value>,
) -> Result<Vec<Value>, crate::process::value::ErrorValue> {
    payloads.iter().map(|p| payload_value(lua, p)).collect()
}

/// A send whose arguments are already owned, as the fast path (`lua/fast_send.rs`) makes
/// them: delivers and returns `true` when every check passes; `false` (nothing done) when
/// `send` itself must answer, with its error.
pub(crate) fn send_checked(ctx: &ProcCtx, dest: &[u8], topic: &str, values: Vec<Value>) -> bool {
    if topic.starts_with('@') {
        return false;
    }
    let Some((pid, target)) = ctx.node.procs.resolve_entry(dest) else {
        return false;
    };
    if !send_allowed(ctx, &pid, &mut None) {
        return false;
    }
    deliver(ctx, target, topic_arc(topic), values);
    true
}

fn send(
    lua: &Lua,
    (dest, topic, payloads): (mlua::Value, mlua::Value, Variadic<mlua::Value>),
) -> mlua::Result<LuaPair> {
    let ctx = context::require_current()?;
    let Some(topic) = sendable_topic(lua, &topic)? else {
        return fail(
            lua,
            ErrorKind::Invalid,
            "topics starting with @ are reserved",
        );
    };
    let (pid, target) = match resolve_dest(&ctx, &dest)? {
        Ok(found) => found,
        Err(m) => return fail(lua, ErrorKind::NotFound, m),
    };
    if !send_allowed(&ctx, &pid, &mut None) {
        return fail(
            lua,
            ErrorKind::PermissionDenied,
            "permission denied: process.send",
        );
    }
    let values = match message_values(lua, &payloads) {
        Ok(v) => v,
        Err(e) => return fail(lua, e.kind, e.message),
    };
    deliver(&ctx, target, topic, values);
    ok(lua, true)
}

/// `process.broadcast(dests, topic, ...)`: `send` to every value of the table `dests` (an
/// array of pids, or a map whose values are pids), converting the payload once and sharing it.
/// Destinations that are not found or not permitted are skipped; returns how many were sent
/// to. Each destination gets exactly what `send` would have given it.
fn broadcast(
    lua: &Lua,
    (dests, topic, payloads): (mlua::Table, mlua::Value, Variadic<mlua::Value>),
) -> mlua::Result<LuaPair> {
    let ctx = context::require_current()?;
    let Some(topic) = sendable_topic(lua, &topic)? else {
        return fail(
            lua,
            ErrorKind::Invalid,
            "topics starting with @ are reserved",
        );
    };
    let values = match message_values(lua, &payloads) {
        Ok(v) => v,
        Err(e) => return fail(lua, e.kind, e.message),
    };
    let mut sent: i64 = 0;
    // Without policies to consult, every destination is decided alike: look up only the live
    // entries (no pid built per destination) and decide once.
    if let Some(allowed) = context::decided_without_policies() {
        if !allowed {
            return ok(lua, sent);
        }
        for pair in dests.pairs::<mlua::Value, mlua::Value>() {
            let (_, dest) = pair?;
            if let Ok(Some(target)) = with_dest(&dest, |d| ctx.node.procs.entry_of(d)) {
                deliver(&ctx, target, topic.clone(), values.clone());
                sent += 1;
            }
        }
        return ok(lua, sent);
    }
    let mut meta = None;
    for pair in dests.pairs::<mlua::Value, mlua::Value>() {
        let (_, dest) = pair?;
        let Ok(Ok((pid, target))) = resolve_dest(&ctx, &dest) else {
            continue;
        };
        if !send_allowed(&ctx, &pid, &mut meta) {
            continue;
        }
        deliver(&ctx, target, topic.clone(), values.clone());
        sent += 1;
    }
    ok(lua, sent)
}

/// `resolve`, keeping the live entry found on the way (`Err` is the NOT_FOUND message).
fn resolve_entry(ctx: &ProcCtx, dest: &str) -> Result<Found, String> {
    ctx.node.procs.resolve_entry(dest).ok_or_else(|| {
        if dest.starts_with('{') {
            format!("invalid pid {dest}")
        } else {
            format!("no process registered as {dest}")
        }
    })
}

#[derive(Clone, Copy)]
struct SpawnMode {
    link: bool,
    monitor: bool,
}

/// The spawn functions of the `process` global and of Spawners, by name.
const SPAWN_VARIANTS: [(&str, SpawnMode); 4] = [
    (
        "spawn",
        SpawnMode {
            link: false,
            monitor: false,
        },
    ),
    (
        "spawn_monitored",
        SpawnMode {
            link: false,
            monitor: true,
        },
    ),
    (
        "spawn_linked",
        SpawnMode {
            link: true,
            monitor: false,
        },
    ),
    (
        "spawn_linked_monitored",
        SpawnMode {
            link: true,
            monitor: true,
        },
    ),
];

/// What a Spawner adds to a spawn.
#[derive(Clone, Default)]
pub struct SpawnExtras {
    name: Option<String>,
    messages: Vec<(String, Vec<Value>)>,
}

/// What a spawn's entry and host references resolve to: the entry, the host and the entry's
/// code (`None`: not found, reported after the policy checks). Shared, not cloned, by every
/// spawn of the same pair (see `SpawnTarget`).
struct SpawnPair {
    entry: EntryId,
    host_id: EntryId,
    code: Option<Arc<crate::lua::compile::CompiledCode>>,
}

/// What `do_spawn` resolved for an (entry, host) pair, reused while the registry snapshot is
/// the same: a spawner usually spawns the same entry over and over.
struct SpawnTarget {
    id: String,
    host: String,
    namespace: String,
    /// Never upgraded; keeps the snapshot's allocation, so its address is not reused.
    snapshot: std::sync::Weak<crate::runtime::Snapshot>,
    resolved: std::rc::Rc<SpawnPair>,
}

thread_local! {
    static LAST_SPAWN: std::cell::RefCell<Option<SpawnTarget>> = const { std::cell::RefCell::new(None) };
}

enum SpawnLookup {
    Found(std::rc::Rc<SpawnPair>),
    Invalid(String),
}

/// Resolves and checks the entry and host references of a spawn (cached, see `SpawnTarget`).
fn spawn_lookup(ctx: &ProcCtx, id: &str, host: &str) -> SpawnLookup {
    let snapshot = ctx.node.snapshot();
    let ns = ctx.namespace();
    let cached = LAST_SPAWN.with(|c| {
        c.borrow().as_ref().and_then(|t| {
            (t.id == id
                && t.host == host
                && t.namespace == ns
                && std::ptr::eq(t.snapshot.as_ptr(), Arc::as_ptr(&snapshot)))
            .then(|| t.resolved.clone())
        })
    });
    if let Some(resolved) = cached {
        return SpawnLookup::Found(resolved);
    }
    let Some(entry) = EntryId::resolve(id, ns) else {
        return SpawnLookup::Invalid(format!("invalid entry id {id:?}"));
    };
    let Some(host_id) = EntryId::resolve(host, ns) else {
        return SpawnLookup::Invalid(format!("invalid host id {host:?}"));
    };
    let code = snapshot.code.get(&entry).cloned();
    let cache = code.as_ref().is_some_and(|c| c.is_process);
    let resolved = std::rc::Rc::new(SpawnPair {
        entry,
        host_id,
        code,
    });
    if cache {
        LAST_SPAWN.with(|c| {
            *c.borrow_mut() = Some(SpawnTarget {
                id: id.to_string(),
                host: host.to_string(),
                namespace: ns.to_string(),
                snapshot: Arc::downgrade(&snapshot),
                resolved: resolved.clone(),
            })
        });
    }
    SpawnLookup::Found(resolved)
}

/// A spawn whose arguments are already owned, as the fast path (`lua/fast_spawn.rs`) makes
/// them: starts the process and returns its pid when no policy needs evaluating and the
/// entry and host resolve to a process and a running host; `None` (nothing done) when
/// `do_spawn` must answer, with its checks and errors. `pid_room`: the longest pid text the
/// caller can return; a longer one is also left to `do_spawn`.
pub(crate) fn spawn_checked(
    ctx: &ProcCtx,
    id: &str,
    host: &str,
    args: Vec<Value>,
    link: bool,
    monitor: bool,
    pid_room: usize,
) -> Option<Pid> {
    if context::decided_without_policies() != Some(true) {
        return None;
    }
    let SpawnLookup::Found(target) = spawn_lookup(ctx, id, host) else {
        return None;
    };
    let (Some(code), host_id) = (target.code.clone(), &target.host_id) else {
        return None;
    };
    // `{namespace:name|id}`, the id at most 20 digits.
    let longest = host_id.namespace.len() + host_id.name.len() + 24;
    if !code.is_process || longest > pid_room {
        return None;
    }
    let me = ctx.pid();
    let options = SpawnOptions {
        link_to: link.then(|| me.clone()),
        monitor_by: monitor.then(|| me.clone()),
        ..SpawnOptions::default()
    };
    let security = ctx.security.borrow().clone();
    // Without a name to register it fails only on a host that is not running, before it
    // does anything.
    runner::spawn_process(&ctx.node, code, host_id, args, security, options).ok()
}

fn do_spawn(
    lua: &Lua,
    mode: SpawnMode,
    extras: &SpawnExtras,
    (id, host, args): (mlua::Value, mlua::Value, Variadic<mlua::Value>),
) -> mlua::Result<LuaPair> {
    let ctx = context::require_current()?;
    let lookup = with_str_arg(lua, 1, &id, |id| {
        with_str_arg(lua, 2, &host, |host| spawn_lookup(&ctx, id, host))
    })??;
    let target = match lookup {
        SpawnLookup::Found(target) => target,
        SpawnLookup::Invalid(message) => return fail(lua, ErrorKind::Invalid, message),
    };
    let (entry, host_id, code) = (&target.entry, &target.host_id, target.code.clone());
    // Without an actor or scope no policy is evaluated (the answer is `!strict`), so the
    // resource strings and meta are only built when a policy will read them.
    if let Some(allowed) = context::decided_without_policies() {
        if !allowed {
            return fail(
                lua,
                ErrorKind::PermissionDenied,
                format!("permission denied: process.spawn on {entry}"),
            );
        }
    } else {
        let meta = pid_meta(&ctx);
        let mut checks = vec![
            ("process.spawn", entry.to_string()),
            ("process.host", host_id.to_string()),
        ];
        if mode.monitor {
            checks.push(("process.spawn.monitored", entry.to_string()));
        }
        if mode.link {
            checks.push(("process.spawn.linked", entry.to_string()));
        }
        for (action, resource) in &checks {
            if !context::allowed_with_meta(action, resource, &meta) {
                return fail(
                    lua,
                    ErrorKind::PermissionDenied,
                    format!("permission denied: {action} on {resource}"),
                );
            }
        }
    }
    let Some(code) = code else {
        return fail(lua, ErrorKind::NotFound, format!("entry {entry} not found"));
    };
    if !code.is_process {
        return fail(
            lua,
            ErrorKind::Invalid,
            format!("entry {entry} is not a process.lua entry"),
        );
    }
    let mut values = Vec::with_capacity(args.len());
    for a in args.iter() {
        match payload_value(lua, a) {
            Ok(v) => values.push(v),
            Err(e) => return fail(lua, e.kind, e.message),
        }
    }
    let me = ctx.pid().clone();
    let messages = extras
        .messages
        .iter()
        .map(|(topic, payloads)| Message {
            from: Some(me.clone()),
            topic: Arc::from(topic.as_str()),
            payloads: payloads.clone(),
        })
        .collect();
    let security = ctx.security.borrow().clone();
    match runner::spawn_process(
        &ctx.node,
        code,
        host_id,
        values,
        security,
        SpawnOptions {
            link_to: mode.link.then(|| me.clone()),
            monitor_by: mode.monitor.then(|| me.clone()),
            name: extras.name.clone(),
            messages,
            on_exit: None,
        },
    ) {
        Ok(pid) => ok(lua, pid_string(lua, &pid)?),
        Err(e) => fail(lua, e.kind, e.message),
    }
}

/// A pid as a Lua string, formatted in a reused buffer (no allocation per spawn).
pub fn pid_string(lua: &Lua, pid: &Pid) -> mlua::Result<mlua::String> {
    use std::fmt::Write;
    thread_local! {
        static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        let _ = write!(b, "{pid}");
        lua.create_string(b.as_bytes())
    })
}

async fn exec(
    lua: Lua,
    (id, host, args): (String, String, Variadic<mlua::Value>),
) -> mlua::Result<LuaPair> {
    let ctx = context::require_current()?;
    let ns = ctx.namespace().to_string();
    let (Some(entry), Some(host_id)) = (EntryId::resolve(&id, &ns), EntryId::resolve(&host, &ns))
    else {
        return fail(&lua, ErrorKind::Invalid, "invalid entry or host id");
    };
    for (action, resource) in [
        ("process.exec", entry.to_string()),
        ("process.host", host_id.to_string()),
    ] {
        if !context::allowed(action, &resource) {
            return fail(
                &lua,
                ErrorKind::PermissionDenied,
                format!("permission denied: {action} on {resource}"),
            );
        }
    }
    let Some(code) = ctx.node.code(&entry) else {
        return fail(
            &lua,
            ErrorKind::NotFound,
            format!("entry {entry} not found"),
        );
    };
    // Same rule as spawn: only process.lua entries run as processes.
    if !code.is_process {
        return fail(
            &lua,
            ErrorKind::Invalid,
            format!("entry {entry} is not a process.lua entry"),
        );
    }
    let mut values = Vec::new();
    for a in args.iter() {
        match payload_value(&lua, a) {
            Ok(v) => values.push(v),
            Err(e) => return fail(&lua, e.kind, e.message),
        }
    }
    let security = ctx.security.borrow().clone();
    let node = ctx.node.clone();
    drop(ctx);
    match runner::exec(&node, code, &host_id, values, security).await {
        Ok(ExitResult::Value(v)) => ok(&lua, convert::to_lua(&lua, &v)?),
        Ok(ExitResult::Error(e)) => fail(&lua, ErrorKind::Internal, e),
        Err(e) => fail(&lua, e.kind, e.message),
    }
}

/// The shared shape of terminate/cancel/monitor/link calls: resolve, check, act.
fn with_target(
    lua: &Lua,
    dest: mlua::Value,
    action: &str,
    act: impl FnOnce(&ProcCtx, &Pid),
) -> mlua::Result<LuaPair> {
    let ctx = context::require_current()?;
    let dest = dest_arg(&dest)?;
    let pid = match resolve(&ctx, &dest) {
        Resolved::Pid(p) => p,
        Resolved::Missing(m) => return fail(lua, ErrorKind::NotFound, m),
    };
    let allowed = context::decided_without_policies()
        .unwrap_or_else(|| context::allowed_with_meta(action, &pid.to_string(), &pid_meta(&ctx)));
    if !allowed {
        return fail(
            lua,
            ErrorKind::PermissionDenied,
            format!("permission denied: {action}"),
        );
    }
    act(&ctx, &pid);
    ok(lua, true)
}

fn cached_channel(
    lua: &Lua,
    slot: &std::cell::RefCell<Option<context::ChannelObject>>,
    core: &std::rc::Rc<ChanCore>,
) -> mlua::Result<AnyUserData> {
    if let Some(object) = slot.borrow().as_ref() {
        return lua.registry_value(&object.key);
    }
    let ud = lua.create_userdata(Channel(core.clone()))?;
    let key = lua.create_registry_value(ud.clone())?;
    // Kept alive by the registry key until `ProcCtx::drop` removes both.
    let addr = crate::lua::fast_receive::enter(&ud, core);
    *slot.borrow_mut() = Some(context::ChannelObject { key, addr });
    Ok(ud)
}

/// Builds a Spawner userdata (immutable; each `with_*` returns a new one).
#[derive(Clone, Default)]
pub struct Spawner(SpawnExtras);

impl UserData for Spawner {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("with_name", |_, this, name: String| {
            let mut s = this.clone();
            s.0.name = Some(name);
            Ok(s)
        });
        methods.add_method(
            "with_message",
            |lua, this, (topic, payloads): (String, Variadic<mlua::Value>)| {
                let mut s = this.clone();
                let values = payloads
                    .iter()
                    .map(|p| payload_value(lua, p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(mlua::Error::external)?;
                s.0.messages.push((topic, values));
                Ok(s)
            },
        );
        methods.add_method("with_context", |_, this, _: mlua::Value| Ok(this.clone()));
        for (name, mode) in SPAWN_VARIANTS {
            methods.add_method(
                name,
                move |lua, this, (id, host, args): (String, String, Variadic<mlua::Value>)| {
                    let id = mlua::Value::String(lua.create_string(&id)?);
                    let host = mlua::Value::String(lua.create_string(&host)?);
                    do_spawn(lua, mode, &this.0, (id, host, args))
                },
            );
        }
    }
}

pub fn register(lua: &Lua, globals: &Table) -> mlua::Result<()> {
    let p = lua.create_table()?;
    p.set(
        "pid",
        lua.create_function(|_, ()| Ok(context::require_current()?.pid().to_string()))?,
    )?;
    p.set(
        "id",
        lua.create_function(|_, ()| Ok(context::require_current()?.code.entry.to_string()))?,
    )?;
    p.set(
        "send",
        crate::lua::fast_send::create(lua, lua.create_function(send)?)?,
    )?;
    p.set("broadcast", lua.create_function(broadcast)?)?;
    for (name, mode) in SPAWN_VARIANTS {
        let full = lua
            .create_function(move |lua, args| do_spawn(lua, mode, &SpawnExtras::default(), args))?;
        p.set(
            name,
            crate::lua::fast_spawn::create(lua, full, mode.link, mode.monitor)?,
        )?;
    }
    p.set("exec", lua.create_async_function(exec)?)?;
    p.set(
        "terminate",
        lua.create_function(|lua, dest: mlua::Value| {
            with_target(lua, dest, "process.terminate", |ctx, pid| {
                if let Some(target) = ctx.node.procs.get(pid.id()) {
                    target.mailbox.kill("terminated");
                }
            })
        })?,
    )?;
    p.set(
        "cancel",
        lua.create_function(|lua, (dest, reason): (mlua::Value, Option<String>)| {
            with_target(lua, dest, "process.cancel", |ctx, pid| {
                ctx.node.procs.send_event(
                    pid,
                    Event::Cancel {
                        from: Some(ctx.pid().clone()),
                        reason: reason.unwrap_or_default(),
                    },
                );
            })
        })?,
    )?;
    // The pairwise relations: each is one table operation on (caller, target).
    type Relation = fn(&crate::process::table::ProcessTable, &Pid, &Pid);
    let relations: [(&str, &'static str, Relation); 4] = [
        ("monitor", "process.monitor", |t, me, pid| {
            t.monitor(me, pid)
        }),
        ("unmonitor", "process.unmonitor", |t, me, pid| {
            t.demonitor(me, pid)
        }),
        ("link", "process.link", |t, me, pid| t.link(me, pid)),
        ("unlink", "process.unlink", |t, me, pid| t.unlink(me, pid)),
    ];
    for (name, action, relate) in relations {
        p.set(
            name,
            lua.create_function(move |lua, dest: mlua::Value| {
                with_target(lua, dest, action, |ctx, pid| {
                    relate(&ctx.node.procs, ctx.pid(), pid)
                })
            })?,
        )?;
    }
    p.set(
        "get_options",
        lua.create_function(|lua, ()| {
            let ctx = context::require_current()?;
            let o = ctx.options.get();
            let t = lua.create_table()?;
            t.set("trap_links", o.trap_links)?;
            t.set("upgradable", o.upgradable)?;
            Ok(t)
        })?,
    )?;
    p.set(
        "set_options",
        lua.create_function(|lua, t: Table| {
            let ctx = context::require_current()?;
            let mut o = ctx.options.get();
            for pair in t.pairs::<String, mlua::Value>() {
                let (k, v) = pair?;
                let mlua::Value::Boolean(b) = v else {
                    return fail_false(
                        lua,
                        ErrorKind::Invalid,
                        format!("option {k} must be a boolean"),
                    );
                };
                match k.as_str() {
                    "trap_links" => o.trap_links = b,
                    "upgradable" => o.upgradable = b,
                    _ => return fail_false(lua, ErrorKind::Invalid, format!("unknown option {k}")),
                }
            }
            ctx.options.set(o);
            ctx.proc
                .upgradable
                .store(o.upgradable, std::sync::atomic::Ordering::Relaxed);
            ok(lua, true)
        })?,
    )?;
    p.set(
        "inbox",
        lua.create_function(|lua, ()| {
            let ctx = context::require_current()?;
            cached_channel(lua, &ctx.inbox_ud, ctx.inbox())
        })?,
    )?;
    p.set(
        "events",
        lua.create_function(|lua, ()| {
            let ctx = context::require_current()?;
            cached_channel(lua, &ctx.events_ud, ctx.events())
        })?,
    )?;
    p.set(
        "listen",
        lua.create_function(|_, (topic, opts): (String, Option<Table>)| {
            let ctx = context::require_current()?;
            if topic.is_empty() || topic.starts_with('@') {
                return Err(mlua::Error::runtime("listen: invalid topic"));
            }
            let as_message = match opts {
                Some(o) => o.get::<Option<bool>>("message")?.unwrap_or(false),
                None => false,
            };
            let core = ChanCore::new(None);
            ctx.listeners.borrow_mut().push(Listener {
                pattern: topic,
                core: core.clone(),
                as_message,
            });
            Ok(Channel(core))
        })?,
    )?;
    p.set(
        "unlisten",
        lua.create_function(|_, ch: AnyUserData| {
            let ctx = context::require_current()?;
            let core = ch.borrow::<Channel>()?.0.clone();
            ctx.listeners
                .borrow_mut()
                .retain(|l| !std::rc::Rc::ptr_eq(&l.core, &core));
            core.close();
            Ok(())
        })?,
    )?;
    p.set(
        "upgrade",
        lua.create_function(
            |lua, (id, args): (Option<String>, Variadic<mlua::Value>)| -> mlua::Result<LuaPair> {
                let ctx = context::require_current()?;
                let entry = match id {
                    Some(id) => match EntryId::resolve(&id, ctx.namespace()) {
                        Some(e) => e,
                        None => {
                            return fail(
                                lua,
                                ErrorKind::Invalid,
                                format!("invalid entry id {id:?}"),
                            )
                        }
                    },
                    None => ctx.code.entry.clone(),
                };
                let values = args
                    .iter()
                    .map(|a| payload_value(lua, a))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(mlua::Error::external)?;
                *ctx.upgrade.borrow_mut() = Some((entry, values));
                Err(mlua::Error::runtime(UPGRADE_SENTINEL))
            },
        )?,
    )?;
    p.set(
        "with_context",
        lua.create_function(|_, _: mlua::Value| Ok(Spawner::default()))?,
    )?;
    p.set(
        "spawner",
        lua.create_function(|_, ()| Ok(Spawner::default()))?,
    )?;

    let event = lua.create_table()?;
    event.set("CANCEL", CANCEL)?;
    event.set("EXIT", EXIT)?;
    event.set("LINK_DOWN", LINK_DOWN)?;
    event.set("OUTDATED", OUTDATED)?;
    p.set("event", crate::lua::sandbox::read_only(lua, event)?)?;

    let registry = lua.create_table()?;
    registry.set("LOCAL", 0)?;
    registry.set(
        "register",
        lua.create_function(
            |lua, (name, pid, scope): (String, Option<String>, Option<i64>)| {
                let ctx = context::require_current()?;
                if scope.unwrap_or(0) != 0 {
                    return fail(
                        lua,
                        ErrorKind::Invalid,
                        "only the LOCAL name scope is supported",
                    );
                }
                if !context::allowed("process.registry.register", &name) {
                    return fail(
                        lua,
                        ErrorKind::PermissionDenied,
                        "permission denied: process.registry.register",
                    );
                }
                let pid = match pid {
                    Some(p) => match ctx.node.procs.resolve(&p) {
                        Some(pid) => {
                            if pid != *ctx.pid()
                                && !context::allowed("process.registry.foreign", &pid.to_string())
                            {
                                return fail(
                                    lua,
                                    ErrorKind::PermissionDenied,
                                    "permission denied: process.registry.foreign",
                                );
                            }
                            pid
                        }
                        None => {
                            return fail(lua, ErrorKind::NotFound, format!("process {p} not found"))
                        }
                    },
                    None => ctx.pid().clone(),
                };
                match ctx.node.procs.register_name(&name, &pid) {
                    Ok(()) => ok(lua, true),
                    Err(crate::process::table::TableError::AlreadyExists) => fail(
                        lua,
                        ErrorKind::AlreadyExists,
                        format!("name {name} is already registered"),
                    ),
                    Err(e) => fail(lua, ErrorKind::NotFound, e.to_string()),
                }
            },
        )?,
    )?;
    registry.set(
        "lookup",
        lua.create_function(|lua, name: String| {
            let ctx = context::require_current()?;
            match ctx.node.procs.lookup(&name) {
                Some(pid) => ok(lua, pid.to_string()),
                None => fail(
                    lua,
                    ErrorKind::NotFound,
                    format!("no process registered as {name}"),
                ),
            }
        })?,
    )?;
    registry.set(
        "unregister",
        lua.create_function(|_, name: String| {
            let ctx = context::require_current()?;
            if !context::allowed("process.registry.unregister", &name) {
                return Ok(false);
            }
            Ok(ctx.node.procs.unregister_name(&name))
        })?,
    )?;
    p.set("registry", crate::lua::sandbox::read_only(lua, registry)?)?;
    globals.raw_set("process", crate::lua::sandbox::read_only(lua, p)?)?;

    let payload = lua.create_table()?;
    payload.set(
        "new",
        lua.create_function(|_, v: mlua::Value| {
            convert::from_lua(&v)
                .map(Payload)
                .map_err(mlua::Error::external)
        })?,
    )?;
    globals.raw_set("payload", crate::lua::sandbox::read_only(lua, payload)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("update.*", "update.price"));
        assert!(!glob("update.*", "other.price"));
        assert!(glob("*", "x"));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }
}
