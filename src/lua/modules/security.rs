//! The `security` module (§6.7): the current actor/scope, `can`, actor/scope construction,
//! registry policies and groups, and token stores, as Actor/Policy/Scope/TokenStore userdata.
//!
//! The module table is shared by every process on the worker, so nothing here captures process
//! state: the caller's context, the policy set and the token stores are read from `context` at
//! call time.

use crate::lua::context;
use crate::lua::convert::{from_lua_in, json_to_lua};
use crate::lua::errors::{error_object, fail, ok};
use crate::process::value::{ErrorKind, ErrorValue};
use crate::registry::duration;
use crate::registry::kinds::EntryId;
use crate::security::token::{TokenError, TokenStore};
use crate::security::{Actor, CompiledPolicy, PolicySet, Scope, SecurityContext};
use mlua::{Lua, MetaMethod, Table, UserData, UserDataMethods, UserDataRef};
use serde_json::Value as J;
use std::sync::Arc;
use std::time::Duration;

type Ret = mlua::Result<(mlua::Value, mlua::Value)>;

/// `security.new_actor`, `security.actor()`, `tokens:validate` results.
#[derive(Clone, Debug)]
pub struct LuaActor(pub Actor);

/// `security.policy(id)` and `scope:policies()` items.
#[derive(Clone, Debug)]
pub struct LuaPolicy(pub Arc<CompiledPolicy>);

/// An immutable scope; `with`/`without` return new ones.
#[derive(Clone, Debug)]
pub struct LuaScope(pub Scope);

/// A handle on a running token store; `close` drops the reference.
pub struct LuaTokenStore {
    id: EntryId,
    store: Option<Arc<TokenStore>>,
}

impl LuaTokenStore {
    pub fn new(id: EntryId, store: Arc<TokenStore>) -> Self {
        LuaTokenStore {
            id,
            store: Some(store),
        }
    }
}

/// Reads an Actor userdata (for bindings such as the Spawner's `with_actor`).
pub fn actor_from_lua(v: &mlua::Value) -> Option<Actor> {
    match v {
        mlua::Value::UserData(ud) => ud.borrow::<LuaActor>().ok().map(|a| a.0.clone()),
        _ => None,
    }
}

/// Reads a Scope userdata (for bindings such as the Spawner's `with_scope`).
pub fn scope_from_lua(v: &mlua::Value) -> Option<Scope> {
    match v {
        mlua::Value::UserData(ud) => ud.borrow::<LuaScope>().ok().map(|s| s.0.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Context access, with hooks so unit tests run without a node.

#[cfg(test)]
pub(crate) mod hooks {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        pub static DENY: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        pub static CHECKS: RefCell<Vec<(String, String, J)>> = const { RefCell::new(Vec::new()) };
        pub static SECURITY: RefCell<Option<Arc<SecurityContext>>> = const { RefCell::new(None) };
        pub static POLICIES: RefCell<Option<Arc<PolicySet>>> = const { RefCell::new(None) };
        pub static TOKEN_STORES: RefCell<Vec<(EntryId, Arc<TokenStore>)>> =
            const { RefCell::new(Vec::new()) };
    }
}

fn permitted(action: &str, resource: &str, meta: Option<J>) -> bool {
    #[cfg(test)]
    {
        let meta = meta.clone().unwrap_or(J::Null);
        hooks::CHECKS.with(|c| c.borrow_mut().push((action.into(), resource.into(), meta)));
        if hooks::DENY.with(|d| d.borrow().iter().any(|a| a == action)) {
            return false;
        }
    }
    match meta {
        Some(m) => context::allowed_with_meta(action, resource, &m),
        None => context::allowed(action, resource),
    }
}

fn current_security() -> Arc<SecurityContext> {
    #[cfg(test)]
    if let Some(s) = hooks::SECURITY.with(|s| s.borrow().clone()) {
        return s;
    }
    context::security()
}

fn current_policies() -> Arc<PolicySet> {
    #[cfg(test)]
    if let Some(p) = hooks::POLICIES.with(|p| p.borrow().clone()) {
        return p;
    }
    context::policies()
}

fn lookup_token_store(id: &EntryId) -> Option<Arc<TokenStore>> {
    #[cfg(test)]
    if let Some(t) = hooks::TOKEN_STORES.with(|t| {
        t.borrow()
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v.clone())
    }) {
        return Some(t);
    }
    context::lookup_token_store(id)
}

/// A raised error that keeps its kind when it ends a process (`errors::from_mlua_error`).
fn raise(kind: ErrorKind, message: String) -> mlua::Error {
    mlua::Error::external(ErrorValue::new(kind, message))
}

fn denied(action: &str, resource: &str) -> String {
    format!("permission denied: {action} on {resource}")
}

/// Raises unless `action @ resource` is allowed (the §0.1 raisers).
fn require(action: &str, resource: &str) -> mlua::Result<()> {
    if permitted(action, resource, None) {
        Ok(())
    } else {
        Err(raise(ErrorKind::PermissionDenied, denied(action, resource)))
    }
}

// ---------------------------------------------------------------------------------------------
// Argument conversion

/// An optional meta table as a JSON object (`nil` ⇒ empty). An array-shaped table keeps its
/// items under `"1"`, `"2"` … so nothing is silently lost.
fn meta_map(lua: &Lua, v: &mlua::Value) -> Result<serde_json::Map<String, J>, String> {
    match v {
        mlua::Value::Nil => Ok(serde_json::Map::new()),
        mlua::Value::Table(_) => match from_lua_in(lua, v).map_err(|e| e.message)?.to_json() {
            J::Object(m) => Ok(m),
            J::Array(items) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| ((i + 1).to_string(), v))
                .collect()),
            _ => Ok(serde_json::Map::new()),
        },
        other => Err(format!("meta must be a table, got {}", other.type_name())),
    }
}

/// Resource meta for a check (`nil` ⇒ none).
fn check_meta(lua: &Lua, v: &mlua::Value) -> mlua::Result<J> {
    match v {
        mlua::Value::Nil => Ok(J::Null),
        _ => meta_map(lua, v)
            .map(J::Object)
            .map_err(mlua::Error::runtime),
    }
}

/// `scope:without` / `scope:contains` argument: an ID string, a Policy, or `{ns, name}`.
fn policy_id_arg(v: &mlua::Value) -> mlua::Result<Option<EntryId>> {
    match v {
        mlua::Value::String(s) => Ok(EntryId::resolve(
            &s.to_str()?,
            &context::current_namespace(),
        )),
        mlua::Value::UserData(ud) => match ud.borrow::<LuaPolicy>() {
            Ok(p) => Ok(Some(p.0.id.clone())),
            Err(_) => Err(mlua::Error::runtime(
                "expected a policy ID, Policy or {ns, name}",
            )),
        },
        mlua::Value::Table(t) => {
            let field = |names: &[&str], index: i64| -> mlua::Result<Option<String>> {
                for n in names {
                    if let Some(s) = t.get::<Option<String>>(*n)? {
                        return Ok(Some(s));
                    }
                }
                t.get::<Option<String>>(index)
            };
            let ns = field(&["ns", "namespace"], 1)?;
            let name = field(&["name"], 2)?;
            match (ns, name) {
                (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
                    Ok(Some(EntryId::new(ns, name)))
                }
                _ => Err(mlua::Error::runtime(
                    "policy reference table needs ns and name",
                )),
            }
        }
        other => Err(mlua::Error::runtime(format!(
            "expected a policy ID, Policy or {{ns, name}}, got {}",
            other.type_name()
        ))),
    }
}

/// Token `expiration`: a duration string or milliseconds; `None` = the store default.
fn expiration_arg(v: &mlua::Value) -> Result<Option<Duration>, String> {
    let bad = || "expiration must be a non-negative duration string or milliseconds".to_string();
    let d = match v {
        mlua::Value::Nil => return Ok(None),
        mlua::Value::Integer(ms) if *ms >= 0 => Duration::from_millis(*ms as u64),
        mlua::Value::Number(ms) if ms.is_finite() && *ms >= 0.0 => {
            Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| bad())?
        }
        mlua::Value::String(s) => {
            let s = s.to_str().map_err(|_| bad())?;
            let nanos = duration::parse_signed_nanos(&s).map_err(|_| bad())?;
            if nanos < 0 {
                return Err(bad());
            }
            Duration::from_nanos(u64::try_from(nanos).map_err(|_| bad())?)
        }
        _ => return Err(bad()),
    };
    Ok((!d.is_zero()).then_some(d))
}

// ---------------------------------------------------------------------------------------------
// Userdata

impl UserData for LuaActor {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("id", |_, this, ()| Ok(this.0.id.clone()));
        methods.add_method("meta", |lua, this, ()| {
            json_to_lua(lua, &J::Object(this.0.meta.clone()))
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(this.0.id.clone()));
    }
}

fn evaluate_args(
    lua: &Lua,
    actor: Option<UserDataRef<LuaActor>>,
    meta: &mlua::Value,
) -> mlua::Result<(Option<Actor>, J)> {
    Ok((actor.map(|a| a.0.clone()), check_meta(lua, meta)?))
}

impl UserData for LuaPolicy {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("id", |_, this, ()| Ok(this.0.id.to_string()));
        methods.add_method(
            "evaluate",
            |lua,
             this,
             (actor, action, resource, meta): (
                Option<UserDataRef<LuaActor>>,
                String,
                String,
                mlua::Value,
            )| {
                let (actor, meta) = evaluate_args(lua, actor, &meta)?;
                Ok(this
                    .0
                    .evaluate(actor.as_ref(), &action, &resource, &meta)
                    .as_str())
            },
        );
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(this.0.id.to_string())
        });
    }
}

impl UserData for LuaScope {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("with", |_, this, policy: UserDataRef<LuaPolicy>| {
            require("security.scope.create", "with")?;
            Ok(LuaScope(this.0.with(policy.0.clone())))
        });
        methods.add_method("without", |_, this, target: mlua::Value| {
            require("security.scope.create", "without")?;
            Ok(LuaScope(match policy_id_arg(&target)? {
                Some(id) => this.0.without(&id),
                None => this.0.clone(),
            }))
        });
        methods.add_method("contains", |_, this, target: mlua::Value| {
            Ok(policy_id_arg(&target)?.is_some_and(|id| this.0.contains(&id)))
        });
        methods.add_method("policies", |lua, this, ()| {
            lua.create_sequence_from(this.0.policies().iter().map(|p| LuaPolicy(p.clone())))
        });
        methods.add_method(
            "evaluate",
            |lua,
             this,
             (actor, action, resource, meta): (
                Option<UserDataRef<LuaActor>>,
                String,
                String,
                mlua::Value,
            )| {
                let (actor, meta) = evaluate_args(lua, actor, &meta)?;
                Ok(this
                    .0
                    .evaluate(actor.as_ref(), &action, &resource, &meta)
                    .as_str())
            },
        );
    }
}

/// Token failures reach Lua as `INTERNAL` (§7.5); messages never contain the token.
fn token_failure(lua: &Lua, what: &str, e: TokenError) -> mlua::Result<mlua::Value> {
    error_object(lua, ErrorKind::Internal, format!("{what}: {e}"))
}

impl LuaTokenStore {
    fn open(&self) -> Result<&Arc<TokenStore>, String> {
        self.store
            .as_ref()
            .ok_or_else(|| format!("token store {} is closed", self.id))
    }
}

impl UserData for LuaTokenStore {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method(
            "create",
            |lua,
             this,
             (actor, scope, opts): (
                UserDataRef<LuaActor>,
                UserDataRef<LuaScope>,
                Option<Table>,
            )| {
                let store = match this.open() {
                    Ok(s) => s.clone(),
                    Err(m) => return fail(lua, ErrorKind::Internal, m),
                };
                let resource = this.id.to_string();
                let meta = serde_json::json!({ "actor": actor.0.id });
                if !permitted("security.token.create", &resource, Some(meta)) {
                    return fail(
                        lua,
                        ErrorKind::Invalid,
                        denied("security.token.create", &resource),
                    );
                }
                let (expiration, token_meta) = match &opts {
                    None => (None, serde_json::Map::new()),
                    Some(o) => {
                        let expiration = match expiration_arg(&o.get::<mlua::Value>("expiration")?)
                        {
                            Ok(e) => e,
                            Err(m) => return fail(lua, ErrorKind::Invalid, m),
                        };
                        match meta_map(lua, &o.get::<mlua::Value>("meta")?) {
                            Ok(m) => (expiration, m),
                            Err(m) => return fail(lua, ErrorKind::Invalid, m),
                        }
                    }
                };
                match store.create(&actor.0, &scope.0, expiration, token_meta) {
                    Ok(token) => ok(lua, token),
                    Err(e) => Ok((
                        mlua::Value::Nil,
                        token_failure(lua, "token creation failed", e)?,
                    )),
                }
            },
        );
        methods.add_method("validate", |lua, this, token: String| {
            let nil = mlua::Value::Nil;
            let store = match this.open() {
                Ok(s) => s.clone(),
                Err(m) => {
                    return Ok((nil.clone(), nil, error_object(lua, ErrorKind::Internal, m)?))
                }
            };
            let resource = this.id.to_string();
            if !permitted("security.token.validate", &resource, None) {
                let m = denied("security.token.validate", &resource);
                return Ok((nil.clone(), nil, error_object(lua, ErrorKind::Invalid, m)?));
            }
            match store.validate(&token, &current_policies()) {
                Ok((actor, scope)) => Ok((
                    mlua::Value::UserData(lua.create_userdata(LuaActor(actor))?),
                    mlua::Value::UserData(lua.create_userdata(LuaScope(scope))?),
                    nil,
                )),
                Err(e) => Ok((
                    nil.clone(),
                    nil,
                    token_failure(lua, "token validation failed", e)?,
                )),
            }
        });
        methods.add_method("revoke", |lua, this, token: String| {
            let store = match this.open() {
                Ok(s) => s.clone(),
                Err(m) => return fail(lua, ErrorKind::Internal, m),
            };
            let resource = this.id.to_string();
            if !permitted("security.token.revoke", &resource, None) {
                return fail(
                    lua,
                    ErrorKind::Invalid,
                    denied("security.token.revoke", &resource),
                );
            }
            match store.revoke(&token) {
                Ok(()) => ok(lua, true),
                Err(e) => Ok((
                    mlua::Value::Nil,
                    token_failure(lua, "token revocation failed", e)?,
                )),
            }
        });
        methods.add_method_mut("close", |_, this, ()| {
            this.store = None;
            Ok(true)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Module functions

fn resolve_id(id: &str) -> Option<EntryId> {
    EntryId::resolve(id, &context::current_namespace())
}

/// The entry `id` names, once `action` on it is permitted; `what` names the kind in errors.
fn permitted_entry(id: &str, what: &str, action: &str) -> Result<EntryId, (ErrorKind, String)> {
    let entry =
        resolve_id(id).ok_or_else(|| (ErrorKind::Invalid, format!("invalid {what} id {id:?}")))?;
    let resource = entry.to_string();
    if !permitted(action, &resource, None) {
        return Err((ErrorKind::Invalid, denied(action, &resource)));
    }
    Ok(entry)
}

fn policy(lua: &Lua, id: String) -> Ret {
    let entry = match permitted_entry(&id, "policy", "security.policy.get") {
        Ok(e) => e,
        Err((kind, message)) => return fail(lua, kind, message),
    };
    match current_policies().get(&entry) {
        Some(p) => ok(lua, LuaPolicy(p)),
        None => fail(
            lua,
            ErrorKind::Internal,
            format!("policy not found: {entry}"),
        ),
    }
}

fn named_scope(lua: &Lua, id: String) -> Ret {
    let entry = match permitted_entry(&id, "policy group", "security.policy_group.get") {
        Ok(e) => e,
        Err((kind, message)) => return fail(lua, kind, message),
    };
    match current_policies().group_scope(&entry) {
        Some(s) => ok(lua, LuaScope(s)),
        None => fail(
            lua,
            ErrorKind::Internal,
            format!("policy group not found or empty: {entry}"),
        ),
    }
}

fn token_store(lua: &Lua, id: String) -> Ret {
    if id.trim().is_empty() {
        return fail(lua, ErrorKind::Invalid, "token store id is empty");
    }
    let entry = match permitted_entry(&id, "token store", "security.token_store.get") {
        Ok(e) => e,
        Err((kind, message)) => return fail(lua, kind, message),
    };
    match lookup_token_store(&entry) {
        Some(store) => ok(lua, LuaTokenStore::new(entry, store)),
        None => fail(
            lua,
            ErrorKind::Internal,
            format!("token store not found: {entry}"),
        ),
    }
}

/// Builds the `security` module table (the caller caches it per Lua state and makes it
/// read-only).
pub fn loader(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "actor",
        lua.create_function(|_, ()| Ok(current_security().actor.clone().map(LuaActor)))?,
    )?;
    t.set(
        "scope",
        lua.create_function(|_, ()| Ok(current_security().scope.clone().map(LuaScope)))?,
    )?;
    t.set(
        "can",
        lua.create_function(
            |lua, (action, resource, meta): (String, String, mlua::Value)| {
                let meta = check_meta(lua, &meta)?;
                Ok(current_security().can(&action, &resource, &meta))
            },
        )?,
    )?;
    t.set(
        "new_actor",
        lua.create_function(|lua, (id, meta): (String, mlua::Value)| {
            require("security.actor.create", &id)?;
            let meta = meta_map(lua, &meta).map_err(mlua::Error::runtime)?;
            Ok(LuaActor(Actor::new(id, meta)))
        })?,
    )?;
    t.set(
        "new_scope",
        lua.create_function(|_, policies: mlua::Value| {
            require("security.scope.create", "custom")?;
            let list = match &policies {
                mlua::Value::Nil => Vec::new(),
                mlua::Value::Table(t) => {
                    let mut list = Vec::new();
                    for item in t.sequence_values::<mlua::Value>() {
                        if let mlua::Value::UserData(ud) = item? {
                            if let Ok(p) = ud.borrow::<LuaPolicy>() {
                                list.push(p.0.clone());
                            }
                        }
                    }
                    list
                }
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "security.new_scope: expected a table of policies, got {}",
                        other.type_name()
                    )))
                }
            };
            Ok(LuaScope(Scope::new(list)))
        })?,
    )?;
    t.set("policy", lua.create_function(policy)?)?;
    t.set("named_scope", lua.create_function(named_scope)?)?;
    t.set("token_store", lua.create_function(token_store)?)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lua::errors::from_mlua_error;
    use crate::registry::kinds;
    use crate::security::Decision;
    use crate::store::memory::MemoryStore;

    fn policy(actions: &[&str], allow: bool, groups: &[&str]) -> kinds::Policy {
        kinds::Policy {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            resources: vec!["*".into()],
            allow,
            conditions: Vec::new(),
            groups: groups
                .iter()
                .map(|g| EntryId::resolve(g, "app").unwrap())
                .collect(),
        }
    }

    fn policy_set() -> Arc<PolicySet> {
        let entries = [
            (
                EntryId::new("app", "user_policy"),
                policy(&["*"], true, &["user"]),
            ),
            (
                EntryId::new("app", "no_write"),
                policy(&["write"], false, &["user"]),
            ),
            (EntryId::new("app", "reader"), policy(&["read"], true, &[])),
        ];
        let (set, errors) = PolicySet::build(entries.iter().map(|(i, p)| (i, p)));
        assert!(errors.is_empty());
        Arc::new(set)
    }

    fn token_store(key: &str) -> Arc<TokenStore> {
        let cfg = kinds::TokenStore {
            store: EntryId::new("app", "token_data"),
            token_length: 32,
            default_expiration: Duration::from_secs(3600),
            token_key: key.into(),
            demo_key: false,
        };
        Arc::new(TokenStore::new(&cfg, Arc::new(MemoryStore::default())))
    }

    /// A state with `errors` and `security`, the registry policies and `app:tokens` installed.
    fn state() -> Lua {
        hooks::POLICIES.with(|p| *p.borrow_mut() = Some(policy_set()));
        hooks::TOKEN_STORES.with(|t| {
            t.borrow_mut()
                .push((EntryId::new("app", "tokens"), token_store("demo-secret")))
        });
        let lua = Lua::new();
        crate::lua::errors::register(&lua, &lua.globals()).unwrap();
        let module = crate::lua::sandbox::read_only(&lua, loader(&lua).unwrap()).unwrap();
        lua.register_module("security", module).unwrap();
        lua
    }

    fn deny(action: &str) {
        hooks::DENY.with(|d| d.borrow_mut().push(action.into()));
    }

    fn set_context(actor: Option<Actor>, scope: Option<Scope>) {
        hooks::SECURITY
            .with(|s| *s.borrow_mut() = Some(Arc::new(SecurityContext::new(actor, scope))));
    }

    fn checks() -> Vec<(String, String, J)> {
        hooks::CHECKS.with(|c| c.borrow().clone())
    }

    fn run(lua: &Lua, code: &str) {
        let v: mlua::Value = lua
            .load(code)
            .eval()
            .unwrap_or_else(|e| panic!("lua failed: {e}"));
        let text = v
            .as_string()
            .and_then(|s| s.to_str().ok().map(|s| s.to_string()));
        assert_eq!(text.as_deref(), Some("ok"), "{v:?}");
    }

    #[test]
    fn no_context() {
        let lua = state();
        run(
            &lua,
            r#"
            local security = require("security")
            assert(security.actor() == nil)
            assert(security.scope() == nil)
            assert(security.can("read", "doc:1") == false)
            assert(security.can("read", "doc:1", {owner = "x"}) == false)
            return "ok"
            "#,
        );
    }

    #[test]
    fn current_context_and_can() {
        let lua = state();
        let set = policy_set();
        let meta = serde_json::json!({"role": "user"})
            .as_object()
            .unwrap()
            .clone();
        set_context(
            Some(Actor::new("user:demo", meta)),
            set.group_scope(&EntryId::new("app", "user")),
        );
        run(
            &lua,
            r#"
            local security = require("security")
            local actor = security.actor()
            assert(actor:id() == "user:demo")
            assert(actor:meta().role == "user")
            assert(tostring(actor) == "user:demo")
            local scope = security.scope()
            local ids = {}
            for _, p in ipairs(scope:policies()) do ids[#ids + 1] = p:id() end
            table.sort(ids)
            assert(#ids == 2 and ids[1] == "app:no_write" and ids[2] == "app:user_policy")
            assert(security.can("read", "doc:1") == true)
            assert(security.can("write", "doc:1") == false, "deny overrides")
            assert(scope:contains("app:user_policy"))
            return "ok"
            "#,
        );
        // An actor without a scope: `can` is false whatever the mode.
        set_context(Some(Actor::with_id("u")), None);
        run(
            &lua,
            r#"return require("security").can("read", "x") == false and "ok""#,
        );
    }

    #[test]
    fn can_passes_resource_meta_to_conditions() {
        let lua = state();
        let mut owner_only = policy(&["edit"], true, &[]);
        owner_only.conditions.push(kinds::Condition {
            field: "meta.owner".into(),
            operator: kinds::ConditionOp::Eq,
            value: kinds::ConditionValue::From("actor.id".into()),
        });
        let id = EntryId::new("app", "owner_only");
        let compiled = CompiledPolicy::compile(id, &owner_only).unwrap();
        set_context(
            Some(Actor::with_id("user:1")),
            Some(Scope::new(vec![Arc::new(compiled)])),
        );
        run(
            &lua,
            r#"
            local security = require("security")
            assert(security.can("edit", "doc:1", {owner = "user:1"}) == true)
            assert(security.can("edit", "doc:1", {owner = "user:2"}) == false)
            assert(security.can("edit", "doc:1") == false)
            assert(not pcall(security.can, "edit", "doc:1", "meta"))
            assert(not pcall(security.can, "edit"))
            local p = security.scope():policies()[1]
            local me = security.new_actor("user:1")
            assert(p:evaluate(me, "edit", "doc:1", {owner = "user:1"}) == "allow")
            assert(p:evaluate(me, "edit", "doc:1", {owner = "user:9"}) == "undefined")
            return "ok"
            "#,
        );
    }

    #[test]
    fn new_actor() {
        let lua = state();
        run(
            &lua,
            r#"
            local security = require("security")
            local a = security.new_actor("user:42", {role = "admin", nested = {k = 1}})
            assert(a:id() == "user:42")
            local m = a:meta()
            assert(m.role == "admin" and m.nested.k == 1)
            m.role = "changed"
            assert(a:meta().role == "admin", "meta() is a copy")
            local bare = security.new_actor("svc")
            assert(next(bare:meta()) == nil)
            assert(not pcall(security.new_actor, "x", "not a table"))
            assert(not pcall(security.new_actor))
            return "ok"
            "#,
        );
        assert!(checks()
            .iter()
            .any(|(a, r, _)| a == "security.actor.create" && r == "user:42"));
    }

    #[test]
    fn raisers_raise_permission_denied() {
        let lua = state();
        deny("security.actor.create");
        deny("security.scope.create");
        let err = lua
            .load(r#"require("security").new_actor("user:1")"#)
            .exec()
            .unwrap_err();
        assert_eq!(from_mlua_error(&err).kind, ErrorKind::PermissionDenied);
        let err = lua
            .load(r#"require("security").new_scope()"#)
            .exec()
            .unwrap_err();
        assert_eq!(from_mlua_error(&err).kind, ErrorKind::PermissionDenied);
        hooks::DENY.with(|d| d.borrow_mut().retain(|a| a != "security.scope.create"));
        run(
            &lua,
            r#"
            local security = require("security")
            local scope = security.new_scope()
            _G.scope = scope
            return "ok"
            "#,
        );
        deny("security.scope.create");
        let err = lua
            .load(r#"scope:with(require("security").policy("app:reader"))"#)
            .exec()
            .unwrap_err();
        assert_eq!(from_mlua_error(&err).kind, ErrorKind::PermissionDenied);
        let err = lua
            .load(r#"scope:without("app:reader")"#)
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{err}");
        // contains needs no permission.
        run(
            &lua,
            r#"return scope:contains("app:reader") == false and "ok""#,
        );
    }

    #[test]
    fn policy_lookup_and_evaluate() {
        let lua = state();
        run(
            &lua,
            r#"
            local security = require("security")
            local p, err = security.policy("app:no_write")
            assert(p and err == nil)
            assert(p:id() == "app:no_write")
            local actor = security.new_actor("user:1")
            assert(p:evaluate(actor, "write", "doc:1") == "deny")
            assert(p:evaluate(actor, "read", "doc:1") == "undefined")
            assert(p:evaluate(nil, "write", "doc:1", {k = 1}) == "deny")
            assert(not pcall(p.evaluate, p, "not an actor", "write", "x"))

            local missing, merr = security.policy("app:nope")
            assert(missing == nil and errors.is(merr, errors.INTERNAL), tostring(merr))
            local bad, berr = security.policy("app:")
            assert(bad == nil and errors.is(berr, errors.INVALID))
            assert(not pcall(security.policy))
            return "ok"
            "#,
        );
        deny("security.policy.get");
        run(
            &lua,
            r#"
            local p, err = require("security").policy("app:no_write")
            assert(p == nil and errors.is(err, errors.INVALID), tostring(err))
            return "ok"
            "#,
        );
    }

    #[test]
    fn named_scope() {
        let lua = state();
        run(
            &lua,
            r#"
            local security = require("security")
            local s, err = security.named_scope("app:user")
            assert(s and err == nil)
            assert(#s:policies() == 2)
            local a = security.new_actor("user:1")
            assert(s:evaluate(a, "read", "x") == "allow")
            assert(s:evaluate(a, "write", "x") == "deny")
            local none, nerr = security.named_scope("app:nobody")
            assert(none == nil and errors.is(nerr, errors.INTERNAL))
            return "ok"
            "#,
        );
        deny("security.policy_group.get");
        run(
            &lua,
            r#"
            local s, err = require("security").named_scope("app:user")
            assert(s == nil and errors.is(err, errors.INVALID))
            return "ok"
            "#,
        );
    }

    #[test]
    fn scope_objects() {
        let lua = state();
        run(
            &lua,
            r#"
            local security = require("security")
            local reader = security.policy("app:reader")
            local no_write = security.policy("app:no_write")
            local user = security.policy("app:user_policy")
            local s0 = security.new_scope({reader, "ignored", 42, {}, no_write})
            assert(#s0:policies() == 2)
            assert(s0:contains("app:reader") and s0:contains(reader))
            assert(s0:contains({ns = "app", name = "no_write"}))
            assert(s0:contains({"app", "no_write"}))
            assert(not s0:contains("app:user_policy"))
            assert(not pcall(s0.contains, s0, 5))

            local s1 = s0:with(user)
            assert(#s0:policies() == 2 and #s1:policies() == 3, "with returns a new scope")
            local again = s1:with(user)
            assert(#again:policies() == 3, "re-adding replaces")
            local a = security.new_actor("user:1")
            assert(s1:evaluate(a, "write", "x") == "deny")
            assert(s1:evaluate(a, "delete", "x") == "allow")
            local s2 = s1:without(no_write)
            assert(s2:evaluate(a, "write", "x") == "allow")
            assert(s1:contains("app:no_write"))
            local s3 = s2:without("app:reader"):without({ns = "app", name = "user_policy"})
            assert(#s3:policies() == 0)
            assert(s3:evaluate(a, "read", "x") == "undefined")
            assert(#s3:without("app:absent"):policies() == 0)
            assert(not pcall(s0.with, s0, "app:reader"), "with needs a Policy")
            assert(not pcall(s0.with, s0, a), "wrong userdata")
            assert(not pcall(security.new_scope, "app:reader"))
            assert(#security.new_scope():policies() == 0)
            return "ok"
            "#,
        );
        let kinds: Vec<_> = checks()
            .into_iter()
            .filter(|(a, _, _)| a == "security.scope.create")
            .map(|(_, r, _)| r)
            .collect();
        assert!(kinds.contains(&"custom".to_string()));
        assert!(kinds.contains(&"with".to_string()));
        assert!(kinds.contains(&"without".to_string()));
    }

    #[test]
    fn token_store_acquisition() {
        let lua = state();
        run(
            &lua,
            r#"
            local security = require("security")
            local s, err = security.token_store("")
            assert(s == nil and errors.is(err, errors.INVALID))
            s, err = security.token_store("app:missing")
            assert(s == nil and errors.is(err, errors.INTERNAL))
            s, err = security.token_store("app:tokens")
            assert(s and err == nil)
            assert(s:close() == true)
            return "ok"
            "#,
        );
        deny("security.token_store.get");
        run(
            &lua,
            r#"
            local s, err = require("security").token_store("app:tokens")
            assert(s == nil and errors.is(err, errors.INVALID), "denial returns, not raises")
            return "ok"
            "#,
        );
    }

    #[test]
    fn tutorial_token_flow() {
        let lua = state();
        // auth_token.lua's security part, then token_auth's validate.
        run(
            &lua,
            r#"
            local security = require("security")
            local actor = security.new_actor("user:" .. "demo", {role = "user", user_id = "demo"})
            local policy, _ = security.policy("app:user_policy")
            local scope = policy and security.new_scope({policy}) or security.new_scope()
            local store, store_err = security.token_store("app:tokens")
            assert(store_err == nil)
            local token, token_err = store:create(actor, scope, {
                expiration = "1h",
                meta = {ip = "127.0.0.1"}
            })
            store:close()
            assert(token_err == nil, tostring(token_err))
            assert(type(token) == "string" and #token == 89, token)
            assert(token:sub(44, 44) == "=" and token:sub(45, 45) == ".")

            local tokens = security.token_store("app:tokens")
            local a, s, err = tokens:validate(token)
            assert(err == nil, tostring(err))
            assert(a:id() == "user:demo" and a:meta().role == "user")
            assert(s:contains("app:user_policy") and #s:policies() == 1)
            assert(s:evaluate(a, "process.spawn", "app:ws_handler") == "allow")

            local forged = token:sub(1, 45) .. string.rep("A", 43) .. "="
            local fa, fs, ferr = tokens:validate(forged)
            assert(fa == nil and fs == nil and errors.is(ferr, errors.INTERNAL))
            assert(not tostring(ferr):find(token:sub(1, 44), 1, true), "errors never echo tokens")

            assert(tokens:revoke(token) == true)
            local ra, rs, rerr = tokens:validate(token)
            assert(ra == nil and rs == nil and errors.is(rerr, errors.INTERNAL))
            local ok2, rerr2 = tokens:revoke(token)
            assert(ok2 == nil and errors.is(rerr2, errors.INTERNAL))
            return "ok"
            "#,
        );
        let create = checks()
            .into_iter()
            .find(|(a, _, _)| a == "security.token.create")
            .unwrap();
        assert_eq!(create.1, "app:tokens");
        assert_eq!(create.2, serde_json::json!({"actor": "user:demo"}));
    }

    #[test]
    fn token_expiration_options() {
        let lua = state();
        run(
            &lua,
            r#"
            local security = require("security")
            local store = security.token_store("app:tokens")
            local a = security.new_actor("u")
            local s = security.new_scope()
            for _, exp in ipairs({"1h", "30m", "1h30m", "7d", 3600000, 1.5e6, 0, "0"}) do
                local t, err = store:create(a, s, {expiration = exp})
                assert(t and err == nil, tostring(exp) .. ": " .. tostring(err))
            end
            assert(store:create(a, s))
            assert(store:create(a, s, {}))
            for _, exp in ipairs({-1, "-5s", "bogus", "10", {}, true}) do
                local t, err = store:create(a, s, {expiration = exp})
                assert(t == nil and errors.is(err, errors.INVALID), tostring(exp))
            end
            local t, err = store:create(a, s, {meta = "nope"})
            assert(t == nil and errors.is(err, errors.INVALID))
            t, err = store:create(a, s, {meta = {f = function() end}})
            assert(t == nil and errors.is(err, errors.INVALID))
            assert(not pcall(store.create, store, "not an actor", s))
            assert(not pcall(store.create, store, a, nil))
            -- An empty scope round-trips as an empty scope.
            local tok = store:create(a, s)
            local va, vs = store:validate(tok)
            assert(va:id() == "u" and #vs:policies() == 0)
            return "ok"
            "#,
        );
    }

    #[test]
    fn token_denials_and_close() {
        let lua = state();
        run(
            &lua,
            r#"
            local security = require("security")
            _G.store = security.token_store("app:tokens")
            _G.actor = security.new_actor("u")
            _G.scope = security.new_scope()
            _G.token = store:create(actor, scope)
            return "ok"
            "#,
        );
        deny("security.token.create");
        deny("security.token.validate");
        deny("security.token.revoke");
        run(
            &lua,
            r#"
            local t, err = store:create(actor, scope)
            assert(t == nil and errors.is(err, errors.INVALID))
            local a, s, verr = store:validate(token)
            assert(a == nil and s == nil and errors.is(verr, errors.INVALID))
            local r, rerr = store:revoke(token)
            assert(r == nil and errors.is(rerr, errors.INVALID))
            return "ok"
            "#,
        );
        hooks::DENY.with(|d| d.borrow_mut().clear());
        run(
            &lua,
            r#"
            assert(store:close() == true)
            assert(store:close() == true, "close is idempotent")
            local t, err = store:create(actor, scope)
            assert(t == nil and errors.is(err, errors.INTERNAL))
            local a, s, verr = store:validate(token)
            assert(a == nil and s == nil and errors.is(verr, errors.INTERNAL))
            local r, rerr = store:revoke(token)
            assert(r == nil and errors.is(rerr, errors.INTERNAL))
            local v1, v2, v3 = store:validate("")
            assert(v1 == nil and v2 == nil and v3 ~= nil)
            return "ok"
            "#,
        );
    }

    #[test]
    fn validation_rebuilds_scope_from_current_policies() {
        let lua = state();
        run(
            &lua,
            r#"
            local security = require("security")
            local store = security.token_store("app:tokens")
            local scope = security.new_scope({security.policy("app:reader"), security.policy("app:no_write")})
            _G.token = store:create(security.new_actor("u"), scope)
            return "ok"
            "#,
        );
        // A reload removed app:reader.
        let entries = [(
            EntryId::new("app", "no_write"),
            policy(&["write"], false, &[]),
        )];
        let reloaded = PolicySet::build(entries.iter().map(|(i, p)| (i, p))).0;
        hooks::POLICIES.with(|p| *p.borrow_mut() = Some(Arc::new(reloaded)));
        run(
            &lua,
            r#"
            local store = require("security").token_store("app:tokens")
            local a, s, err = store:validate(token)
            assert(err == nil)
            local ps = s:policies()
            assert(#ps == 1 and ps[1]:id() == "app:no_write")
            return "ok"
            "#,
        );
    }

    #[test]
    fn userdata_helpers() {
        let lua = state();
        let v: mlua::Value = lua
            .load(r#"local s = require("security") return s.new_actor("x", {k = "v"})"#)
            .eval()
            .unwrap();
        let a = actor_from_lua(&v).unwrap();
        assert_eq!(a.id, "x");
        assert_eq!(a.meta.get("k"), Some(&J::String("v".into())));
        assert!(scope_from_lua(&v).is_none());
        let v: mlua::Value = lua
            .load(r#"local s = require("security") return s.new_scope({s.policy("app:reader")})"#)
            .eval()
            .unwrap();
        let scope = scope_from_lua(&v).unwrap();
        assert_eq!(scope.policy_ids(), vec![EntryId::new("app", "reader")]);
        assert_eq!(
            scope.evaluate(Some(&a), "read", "r", &J::Null),
            Decision::Allow
        );
        assert!(actor_from_lua(&mlua::Value::Nil).is_none());
    }

    #[test]
    fn expiration_parsing() {
        let lua = Lua::new();
        let v = |code: &str| -> mlua::Value { lua.load(code).eval().unwrap() };
        assert_eq!(expiration_arg(&v("return nil")), Ok(None));
        assert_eq!(expiration_arg(&v("return 0")), Ok(None));
        assert_eq!(expiration_arg(&v("return '0s'")), Ok(None));
        assert_eq!(
            expiration_arg(&v("return 1500")),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(
            expiration_arg(&v("return 2.5")),
            Ok(Some(Duration::from_micros(2500)))
        );
        assert_eq!(
            expiration_arg(&v("return '1h'")),
            Ok(Some(Duration::from_secs(3600)))
        );
        assert_eq!(
            expiration_arg(&v("return '1d'")),
            Ok(Some(Duration::from_secs(86400)))
        );
        assert!(expiration_arg(&v("return -1")).is_err());
        assert!(expiration_arg(&v("return -0.5")).is_err());
        assert!(expiration_arg(&v("return '-1h'")).is_err());
        assert!(expiration_arg(&v("return 'abc'")).is_err());
        assert!(expiration_arg(&v("return 0/0")).is_err());
        assert!(expiration_arg(&v("return {}")).is_err());
    }
}
