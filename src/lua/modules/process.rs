//! The `process` global (§3): identity, messaging, spawning, links and monitors, options, the
//! inbox/events/listen channels, upgrade, the name registry; plus Message/Payload objects and
//! the `payload` global.

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

/// A received message (`msg:topic()`, `msg:from()`, `msg:payload()`).
pub struct LuaMessage(pub Message);

impl UserData for LuaMessage {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("topic", |_, this, ()| Ok(this.0.topic.to_string()));
        methods.add_method("from", |_, this, ()| {
            Ok(this.0.from.as_ref().map(|p| p.to_string()))
        });
        methods.add_method("payload", |lua, this, ()| match this.0.payloads.len() {
            0 => Ok(mlua::Value::Nil),
            1 => Ok(mlua::Value::UserData(
                lua.create_userdata(Payload(this.0.payloads[0].clone()))?,
            )),
            _ => {
                let t = lua.create_table()?;
                for (i, p) in this.0.payloads.iter().enumerate() {
                    t.raw_set(i + 1, Payload(p.clone()))?;
                }
                Ok(mlua::Value::Table(t))
            }
        });
    }
}

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

pub fn message_to_lua(lua: &Lua, m: Message) -> mlua::Result<mlua::Value> {
    Ok(mlua::Value::UserData(lua.create_userdata(LuaMessage(m))?))
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
pub fn payload_value(v: &mlua::Value) -> Result<Value, crate::process::value::ErrorValue> {
    if let mlua::Value::UserData(ud) = v {
        if let Ok(p) = ud.borrow::<Payload>() {
            return Ok(p.0.clone());
        }
    }
    convert::from_lua(v)
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

fn send(
    lua: &Lua,
    (dest, topic, payloads): (mlua::Value, String, Variadic<mlua::Value>),
) -> mlua::Result<LuaPair> {
    let ctx = context::require_current()?;
    if topic.starts_with('@') {
        return fail(
            lua,
            ErrorKind::Invalid,
            "topics starting with @ are reserved",
        );
    }
    let dest = dest_arg(&dest)?;
    let pid = match resolve(&ctx, &dest) {
        Resolved::Pid(p) => p,
        Resolved::Missing(m) => return fail(lua, ErrorKind::NotFound, m),
    };
    let allowed = context::decided_without_policies().unwrap_or_else(|| {
        context::allowed_with_meta("process.send", &pid.to_string(), &pid_meta(&ctx))
    });
    if !allowed {
        return fail(
            lua,
            ErrorKind::PermissionDenied,
            "permission denied: process.send",
        );
    }
    let mut values = Vec::with_capacity(payloads.len());
    for p in payloads.iter() {
        match payload_value(p) {
            Ok(v) => values.push(v),
            Err(e) => return fail(lua, e.kind, e.message),
        }
    }
    ctx.node.procs.send(
        &pid,
        Message {
            from: Some(ctx.pid().clone()),
            topic: Arc::from(topic),
            payloads: values,
        },
    );
    ok(lua, true)
}

#[derive(Clone, Copy)]
struct SpawnMode {
    link: bool,
    monitor: bool,
}

/// What a Spawner adds to a spawn.
#[derive(Clone, Default)]
pub struct SpawnExtras {
    name: Option<String>,
    messages: Vec<(String, Vec<Value>)>,
}

fn do_spawn(
    lua: &Lua,
    mode: SpawnMode,
    extras: &SpawnExtras,
    (id, host, args): (String, String, Variadic<mlua::Value>),
) -> mlua::Result<LuaPair> {
    let ctx = context::require_current()?;
    let ns = ctx.namespace().to_string();
    let Some(entry) = EntryId::resolve(&id, &ns) else {
        return fail(lua, ErrorKind::Invalid, format!("invalid entry id {id:?}"));
    };
    let Some(host_id) = EntryId::resolve(&host, &ns) else {
        return fail(lua, ErrorKind::Invalid, format!("invalid host id {host:?}"));
    };
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
    let snapshot = ctx.node.snapshot();
    let Some(code) = snapshot.code.get(&entry).cloned() else {
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
        match payload_value(a) {
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
        &host_id,
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
        Ok(pid) => ok(lua, pid.to_string()),
        Err(e) => fail(lua, e.kind, e.message),
    }
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
        match payload_value(a) {
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
    slot: &std::cell::RefCell<Option<AnyUserData>>,
    core: &std::rc::Rc<ChanCore>,
) -> mlua::Result<AnyUserData> {
    if let Some(ud) = slot.borrow().as_ref() {
        return Ok(ud.clone());
    }
    let ud = lua.create_userdata(Channel(core.clone()))?;
    *slot.borrow_mut() = Some(ud.clone());
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
            |_, this, (topic, payloads): (String, Variadic<mlua::Value>)| {
                let mut s = this.clone();
                let values = payloads
                    .iter()
                    .map(payload_value)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(mlua::Error::external)?;
                s.0.messages.push((topic, values));
                Ok(s)
            },
        );
        methods.add_method("with_context", |_, this, _: mlua::Value| Ok(this.clone()));
        for (name, mode) in [
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
        ] {
            methods.add_method(
                name,
                move |lua, this, args: (String, String, Variadic<mlua::Value>)| {
                    do_spawn(lua, mode, &this.0, args)
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
    p.set("send", lua.create_function(send)?)?;
    for (name, mode) in [
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
    ] {
        p.set(
            name,
            lua.create_function(move |lua, args| {
                do_spawn(lua, mode, &SpawnExtras::default(), args)
            })?,
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
    p.set(
        "monitor",
        lua.create_function(|lua, dest: mlua::Value| {
            with_target(lua, dest, "process.monitor", |ctx, pid| {
                ctx.node.procs.monitor(ctx.pid(), pid)
            })
        })?,
    )?;
    p.set(
        "unmonitor",
        lua.create_function(|lua, dest: mlua::Value| {
            with_target(lua, dest, "process.unmonitor", |ctx, pid| {
                ctx.node.procs.demonitor(ctx.pid(), pid)
            })
        })?,
    )?;
    p.set(
        "link",
        lua.create_function(|lua, dest: mlua::Value| {
            with_target(lua, dest, "process.link", |ctx, pid| {
                ctx.node.procs.link(ctx.pid(), pid)
            })
        })?,
    )?;
    p.set(
        "unlink",
        lua.create_function(|lua, dest: mlua::Value| {
            with_target(lua, dest, "process.unlink", |ctx, pid| {
                ctx.node.procs.unlink(ctx.pid(), pid)
            })
        })?,
    )?;
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
            cached_channel(lua, &ctx.inbox_ud, &ctx.inbox)
        })?,
    )?;
    p.set(
        "events",
        lua.create_function(|lua, ()| {
            let ctx = context::require_current()?;
            cached_channel(lua, &ctx.events_ud, &ctx.events)
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
                    .map(payload_value)
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
