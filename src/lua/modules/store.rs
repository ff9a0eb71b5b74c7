//! The `store` module (§6.8): `store.get(id)` and the Store userdata over `store::memory`, with
//! the `store.backend` / `store.consistency` constants.
//!
//! The module table is shared by every process on the worker, so nothing here captures process
//! state: permissions and store lookups go through `context` at call time.

use crate::lua::context;
use crate::lua::convert::{from_lua_in, to_lua};
use crate::lua::errors::{fail, ok};
use crate::lua::sandbox::read_only;
use crate::process::value::{ErrorKind, ErrorValue, Value};
use crate::registry::kinds::EntryId;
use crate::store::memory::{MemoryStore, PutOptions, StoreError};
use mlua::{Lua, Table, UserData, UserDataMethods};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

type Ret = mlua::Result<(mlua::Value, mlua::Value)>;

/// Page size of `s:list` when the caller gives no (or a non-positive) `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 1000;

const BACKENDS: [(&str, &str); 5] = [
    ("MEMORY", "memory"),
    ("SQL", "sql"),
    ("KV_RAFT", "kv.raft"),
    ("KV_CRDT", "kv.crdt"),
    ("UNKNOWN", "unknown"),
];

const CONSISTENCY: [(&str, &str); 4] = [
    ("LINEARIZABLE", "linearizable"),
    ("EVENTUAL", "eventual"),
    ("LOCAL", "local"),
    ("UNKNOWN", "unknown"),
];

/// A store handle from `store.get`; `release` drops the reference.
pub struct LuaStore {
    id: EntryId,
    store: Option<Arc<MemoryStore>>,
}

impl LuaStore {
    pub fn new(id: EntryId, store: Arc<MemoryStore>) -> Self {
        LuaStore {
            id,
            store: Some(store),
        }
    }
}

#[cfg(test)]
pub(crate) mod hooks {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        pub static DENY: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        pub static CHECKS: RefCell<Vec<(String, String, serde_json::Value)>> =
            const { RefCell::new(Vec::new()) };
        pub static STORES: RefCell<Vec<(EntryId, Arc<MemoryStore>)>> =
            const { RefCell::new(Vec::new()) };
    }
}

fn permitted(action: &str, resource: &str, meta: Option<serde_json::Value>) -> bool {
    #[cfg(test)]
    {
        let m = meta.clone().unwrap_or(serde_json::Value::Null);
        hooks::CHECKS.with(|c| c.borrow_mut().push((action.into(), resource.into(), m)));
        if hooks::DENY.with(|d| d.borrow().iter().any(|a| a == action)) {
            return false;
        }
    }
    match meta {
        Some(m) => context::allowed_with_meta(action, resource, &m),
        None => context::allowed(action, resource),
    }
}

fn lookup(id: &EntryId) -> Option<Arc<MemoryStore>> {
    #[cfg(test)]
    if let Some(s) = hooks::STORES.with(|s| {
        s.borrow()
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v.clone())
    }) {
        return Some(s);
    }
    context::lookup_memory_store(id)
}

/// The failure return for a store error, keeping `CONFLICT` retryable.
fn store_fail(lua: &Lua, e: StoreError) -> Ret {
    let ev = ErrorValue {
        retryable: Some(e.retryable()),
        ..ErrorValue::new(e.kind(), e.to_string())
    };
    let err = lua.create_userdata(crate::lua::errors::LuaError(Arc::new(ev)))?;
    Ok((mlua::Value::Nil, mlua::Value::UserData(err)))
}

/// TTL in seconds (`nil`/`0` = none); negative or non-numeric is an error message.
fn ttl_arg(v: &mlua::Value) -> Result<Option<Duration>, String> {
    let secs = match v {
        mlua::Value::Nil => return Ok(None),
        mlua::Value::Integer(i) => *i as f64,
        mlua::Value::Number(n) => *n,
        other => {
            return Err(format!(
                "ttl must be a number of seconds, got {}",
                other.type_name()
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err("ttl must be a non-negative number of seconds".into());
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?;
    Ok((!d.is_zero()).then_some(d))
}

/// Versions are opaque strings to scripts; a number is accepted too.
fn version_arg(v: &mlua::Value) -> Result<Option<Option<u64>>, String> {
    Ok(match v {
        mlua::Value::Nil => None,
        // A version this store never issued can only mismatch.
        mlua::Value::String(s) => Some(s.to_str().ok().and_then(|s| s.trim().parse().ok())),
        mlua::Value::Integer(i) => Some(u64::try_from(*i).ok()),
        mlua::Value::Number(n) if n.fract() == 0.0 && *n >= 0.0 => Some(Some(*n as u64)),
        other => {
            return Err(format!(
                "if_version must be a string, got {}",
                other.type_name()
            ))
        }
    })
}

fn entry_table(lua: &Lua, key: &str, value: &Value, version: u64) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("key", key)?;
    t.set("value", to_lua(lua, value)?)?;
    t.set("version", version.to_string())?;
    Ok(t)
}

impl LuaStore {
    /// The live store, after the permission check; `Err` is the ready failure return.
    fn begin(
        &self,
        lua: &Lua,
        action: &str,
        meta: Option<serde_json::Value>,
    ) -> Result<Arc<MemoryStore>, Ret> {
        let Some(store) = self.store.clone() else {
            return Err(fail(
                lua,
                ErrorKind::Invalid,
                format!("store {} was released", self.id),
            ));
        };
        let resource = self.id.to_string();
        if !permitted(action, &resource, meta) {
            return Err(fail(
                lua,
                ErrorKind::PermissionDenied,
                format!("permission denied: {action} on {resource}"),
            ));
        }
        Ok(store)
    }

    fn key_op(&self, lua: &Lua, action: &str, key: &str) -> Result<Arc<MemoryStore>, Ret> {
        if key.is_empty() {
            return Err(fail(lua, ErrorKind::Invalid, "key is empty"));
        }
        self.begin(lua, action, Some(json!({ "key": key })))
    }
}

macro_rules! try_ret {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(ret) => return ret,
        }
    };
}

fn value_arg(lua: &Lua, v: &mlua::Value) -> Result<Value, Ret> {
    from_lua_in(lua, v).map_err(|e| fail(lua, ErrorKind::Invalid, e.message))
}

impl UserData for LuaStore {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |lua, this, key: String| {
            let store = try_ret!(this.key_op(lua, "store.key.get", &key));
            match store.get(&key) {
                Some(v) => ok(lua, to_lua(lua, &v)?),
                None => fail(lua, ErrorKind::NotFound, format!("key not found: {key}")),
            }
        });
        methods.add_method("entry", |lua, this, key: String| {
            let store = try_ret!(this.key_op(lua, "store.key.get", &key));
            match store.entry(&key) {
                Some((v, version)) => ok(lua, entry_table(lua, &key, &v, version)?),
                None => fail(lua, ErrorKind::NotFound, format!("key not found: {key}")),
            }
        });
        methods.add_method(
            "set",
            |lua, this, (key, value, ttl): (String, mlua::Value, mlua::Value)| {
                let store = try_ret!(this.key_op(lua, "store.key.set", &key));
                let ttl = match ttl_arg(&ttl) {
                    Ok(t) => t,
                    Err(m) => return fail(lua, ErrorKind::Invalid, m),
                };
                let value = try_ret!(value_arg(lua, &value));
                match store.set(&key, value, ttl) {
                    Ok(()) => ok(lua, true),
                    Err(e) => store_fail(lua, e),
                }
            },
        );
        methods.add_method(
            "put",
            |lua, this, (key, value, opts): (String, mlua::Value, Option<Table>)| {
                let store = try_ret!(this.key_op(lua, "store.key.set", &key));
                let mut put = PutOptions::default();
                if let Some(o) = &opts {
                    put.ttl = match ttl_arg(&o.get::<mlua::Value>("ttl")?) {
                        Ok(t) => t,
                        Err(m) => return fail(lua, ErrorKind::Invalid, m),
                    };
                    put.only_if_absent = o.get::<Option<bool>>("only_if_absent")?.unwrap_or(false);
                    match version_arg(&o.get::<mlua::Value>("if_version")?) {
                        Ok(None) => {}
                        Ok(Some(v)) => {
                            if put.only_if_absent {
                                return fail(
                                    lua,
                                    ErrorKind::Invalid,
                                    "only_if_absent and if_version are mutually exclusive",
                                );
                            }
                            match v {
                                Some(v) => put.if_version = Some(v),
                                None => return store_fail(lua, StoreError::Conflict),
                            }
                        }
                        Err(m) => return fail(lua, ErrorKind::Invalid, m),
                    }
                }
                let value = try_ret!(value_arg(lua, &value));
                match store.put(&key, value.clone(), put) {
                    Ok(version) => ok(lua, entry_table(lua, &key, &value, version)?),
                    Err(e) => store_fail(lua, e),
                }
            },
        );
        methods.add_method("has", |lua, this, key: String| {
            let store = try_ret!(this.key_op(lua, "store.key.has", &key));
            ok(lua, store.has(&key))
        });
        methods.add_method("delete", |lua, this, key: String| {
            let store = try_ret!(this.key_op(lua, "store.key.delete", &key));
            ok(lua, store.delete(&key))
        });
        methods.add_method("list", |lua, this, opts: Option<Table>| {
            let (prefix, after, limit) = match &opts {
                Some(o) => (
                    o.get::<Option<String>>("prefix")?,
                    o.get::<Option<String>>("after")?,
                    o.get::<Option<i64>>("limit")?,
                ),
                None => (None, None, None),
            };
            let meta = prefix.as_ref().map(|p| json!({ "prefix": p }));
            let store = try_ret!(this.begin(lua, "store.key.list", meta));
            let limit = match limit {
                Some(l) if l > 0 => usize::try_from(l).unwrap_or(usize::MAX),
                _ => DEFAULT_LIST_LIMIT,
            };
            let (items, cursor, more) =
                store.list_entries(prefix.as_deref(), after.as_deref(), limit);
            let list = lua.create_table_with_capacity(items.len(), 0)?;
            for (k, v, version) in &items {
                list.push(entry_table(lua, k, v, *version)?)?;
            }
            let page = lua.create_table()?;
            page.set("items", list)?;
            page.set("cursor", cursor)?;
            page.set("has_more", more)?;
            ok(lua, page)
        });
        methods.add_method("info", |lua, this, ()| {
            try_ret!(this.begin(lua, "store.info", None));
            let t = lua.create_table()?;
            t.set("id", this.id.to_string())?;
            t.set("backend", "memory")?;
            t.set("consistency", "local")?;
            t.set("durable", false)?;
            for flag in ["list", "versioned", "conditional_put", "ttl"] {
                t.set(flag, true)?;
            }
            ok(lua, t)
        });
        methods.add_method_mut("release", |_, this, ()| {
            this.store = None;
            Ok(true)
        });
    }
}

fn get(lua: &Lua, id: String) -> Ret {
    if id.trim().is_empty() {
        return fail(lua, ErrorKind::Invalid, "store id is empty");
    }
    let Some(entry) = EntryId::resolve(&id, &context::current_namespace()) else {
        return fail(lua, ErrorKind::Invalid, format!("invalid store id {id:?}"));
    };
    let resource = entry.to_string();
    if !permitted("store.get", &resource, None) {
        return fail(
            lua,
            ErrorKind::PermissionDenied,
            format!("permission denied: store.get on {resource}"),
        );
    }
    match lookup(&entry) {
        Some(store) => ok(lua, LuaStore::new(entry, store)),
        None => fail(
            lua,
            ErrorKind::NotFound,
            format!("store not found: {resource}"),
        ),
    }
}

fn constants(lua: &Lua, pairs: &[(&str, &str)]) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (k, v) in pairs {
        t.set(*k, *v)?;
    }
    read_only(lua, t)
}

/// Builds the `store` module table (the caller caches it per Lua state and makes it read-only).
pub fn loader(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("get", lua.create_function(get)?)?;
    t.set("backend", constants(lua, &BACKENDS)?)?;
    t.set("consistency", constants(lua, &CONSISTENCY)?)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(max_size: usize) -> (Lua, Arc<MemoryStore>) {
        let mem = Arc::new(MemoryStore::new(max_size, Duration::from_secs(60)));
        hooks::STORES.with(|s| {
            s.borrow_mut()
                .push((EntryId::new("app", "cache"), mem.clone()))
        });
        let lua = Lua::new();
        crate::lua::errors::register(&lua, &lua.globals()).unwrap();
        let module = read_only(&lua, loader(&lua).unwrap()).unwrap();
        lua.register_module("store", module).unwrap();
        (lua, mem)
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

    fn deny(action: &str) {
        hooks::DENY.with(|d| d.borrow_mut().push(action.into()));
    }

    #[test]
    fn acquisition() {
        let (lua, _) = state(10);
        run(
            &lua,
            r#"
            local store = require("store")
            local s, err = store.get("")
            assert(s == nil and errors.is(err, errors.INVALID))
            s, err = store.get("app:missing")
            assert(s == nil and errors.is(err, errors.NOT_FOUND))
            s, err = store.get("app:cache")
            assert(s and err == nil)
            assert(not pcall(store.get))
            assert(store.backend.MEMORY == "memory" and store.backend.KV_RAFT == "kv.raft")
            assert(store.consistency.LOCAL == "local")
            assert(not pcall(function() store.backend.MEMORY = "x" end))
            return "ok"
            "#,
        );
        deny("store.get");
        run(
            &lua,
            r#"
            local s, err = require("store").get("app:cache")
            assert(s == nil and errors.is(err, errors.PERMISSION_DENIED))
            return "ok"
            "#,
        );
    }

    #[test]
    fn basic_operations() {
        let (lua, mem) = state(10);
        run(
            &lua,
            r#"
            local s = require("store").get("app:cache")
            local v, err = s:get("user:1")
            assert(v == nil and errors.is(err, errors.NOT_FOUND))
            assert(s:set("user:1", {name = "Alice", tags = {"a", "b"}}) == true)
            local u = s:get("user:1")
            assert(u.name == "Alice" and u.tags[2] == "b")
            u.name = "changed"
            assert(s:get("user:1").name == "Alice", "values are copied")
            assert(s:has("user:1") == true and s:has("nope") == false)
            local e = s:entry("user:1")
            assert(e.key == "user:1" and e.value.name == "Alice" and type(e.version) == "string")
            local me, merr = s:entry("nope")
            assert(me == nil and errors.is(merr, errors.NOT_FOUND))
            assert(s:set("n", 42) and s:get("n") == 42 and math.type(s:get("n")) == "integer")
            assert(s:set("f", 1.5) and s:get("f") == 1.5)
            assert(s:set("b", false) and s:get("b") == false)
            assert(s:delete("n") == true)
            assert(s:delete("n") == false)
            local bad, berr = s:set("fn", function() end)
            assert(bad == nil and errors.is(berr, errors.INVALID))
            local ek, ekerr = s:get("")
            assert(ek == nil and errors.is(ekerr, errors.INVALID))
            assert(not pcall(s.get, s))
            return "ok"
            "#,
        );
        assert!(mem.has("user:1"));
        let checks = hooks::CHECKS.with(|c| c.borrow().clone());
        assert!(checks.iter().any(|(a, r, m)| a == "store.key.set"
            && r == "app:cache"
            && m == &json!({"key": "user:1"})));
        for action in ["store.key.get", "store.key.has", "store.key.delete"] {
            assert!(checks.iter().any(|(a, _, _)| a == action), "{action}");
        }
    }

    #[test]
    fn ttl_seconds() {
        let (lua, _) = state(10);
        run(
            &lua,
            r#"
            local s = require("store").get("app:cache")
            assert(s:set("short", "x", 0.03))
            assert(s:set("forever", "y", 0))
            assert(s:put("put_short", "z", {ttl = 0.03}))
            local r, err = s:set("neg", "x", -1)
            assert(r == nil and errors.is(err, errors.INVALID))
            r, err = s:set("str", "x", "10")
            assert(r == nil and errors.is(err, errors.INVALID))
            _G.s = s
            return "ok"
            "#,
        );
        std::thread::sleep(Duration::from_millis(60));
        run(
            &lua,
            r#"
            local v, err = s:get("short")
            assert(v == nil and errors.is(err, errors.NOT_FOUND))
            assert(s:has("short") == false and s:has("put_short") == false)
            assert(s:get("forever") == "y")
            return "ok"
            "#,
        );
    }

    #[test]
    fn conditional_put() {
        let (lua, _) = state(10);
        run(
            &lua,
            r#"
            local s = require("store").get("app:cache")
            local e, err = s:put("lock", "owner-1", {only_if_absent = true})
            assert(e and err == nil and e.key == "lock" and e.value == "owner-1")
            local e2, err2 = s:put("lock", "owner-2", {only_if_absent = true})
            assert(e2 == nil and errors.is(err2, errors.ALREADY_EXISTS))
            assert(err2:retryable() == false)
            assert(s:get("lock") == "owner-1")

            local cur = s:entry("lock")
            local n, nerr = s:put("lock", "owner-3", {if_version = cur.version})
            assert(n and nerr == nil and n.version ~= cur.version)
            local stale, serr = s:put("lock", "owner-4", {if_version = cur.version})
            assert(stale == nil and errors.is(serr, errors.CONFLICT))
            assert(serr:retryable() == true)
            local junk, jerr = s:put("lock", "x", {if_version = "not-a-version"})
            assert(junk == nil and errors.is(jerr, errors.CONFLICT))
            local num = s:put("lock", "owner-5", {if_version = tonumber(n.version)})
            assert(num and s:get("lock") == "owner-5")

            local both, berr = s:put("k", "v", {only_if_absent = true, if_version = "1"})
            assert(both == nil and errors.is(berr, errors.INVALID))
            assert(s:has("k") == false)
            local plain = s:put("k", "v")
            assert(plain.version and s:get("k") == "v")
            return "ok"
            "#,
        );
    }

    #[test]
    fn list_pages() {
        let (lua, _) = state(100);
        run(
            &lua,
            r#"
            local s = require("store").get("app:cache")
            for _, k in ipairs({"session:c", "session:a", "other", "session:b", "session:d"}) do
                s:set(k, k:upper())
            end
            local page, err = s:list({prefix = "session:", limit = 3})
            assert(err == nil)
            assert(#page.items == 3 and page.has_more == true)
            assert(page.items[1].key == "session:a" and page.items[1].value == "SESSION:A")
            assert(type(page.items[1].version) == "string")
            assert(page.cursor == "session:c")
            local p2 = s:list({prefix = "session:", after = page.cursor, limit = 3})
            assert(#p2.items == 1 and p2.items[1].key == "session:d" and p2.has_more == false)
            local all = s:list()
            assert(#all.items == 5 and all.has_more == false and all.items[1].key == "other")
            local empty = s:list({prefix = "zzz"})
            assert(#empty.items == 0 and empty.cursor == nil and empty.has_more == false)
            return "ok"
            "#,
        );
        let checks = hooks::CHECKS.with(|c| c.borrow().clone());
        assert!(checks
            .iter()
            .any(|(a, _, m)| a == "store.key.list" && m == &json!({"prefix": "session:"})));
    }

    #[test]
    fn info_and_release() {
        let (lua, _) = state(10);
        run(
            &lua,
            r#"
            local s = require("store").get("app:cache")
            local info = s:info()
            assert(info.id == "app:cache" and info.backend == "memory")
            assert(info.consistency == "local" and info.durable == false)
            assert(info.list and info.versioned and info.conditional_put and info.ttl)
            assert(s:release() == true)
            assert(s:release() == true)
            local v, err = s:get("k")
            assert(v == nil and errors.is(err, errors.INVALID))
            local r, rerr = s:set("k", 1)
            assert(r == nil and errors.is(rerr, errors.INVALID))
            local l, lerr = s:list()
            assert(l == nil and errors.is(lerr, errors.INVALID))
            local i, ierr = s:info()
            assert(i == nil and errors.is(ierr, errors.INVALID))
            return "ok"
            "#,
        );
    }

    #[test]
    fn denied_key_operations() {
        let (lua, _) = state(10);
        deny("store.key.set");
        deny("store.key.list");
        run(
            &lua,
            r#"
            local s = require("store").get("app:cache")
            local r, err = s:set("k", 1)
            assert(r == nil and errors.is(err, errors.PERMISSION_DENIED))
            local p, perr = s:put("k", 1)
            assert(p == nil and errors.is(perr, errors.PERMISSION_DENIED))
            local l, lerr = s:list({})
            assert(l == nil and errors.is(lerr, errors.PERMISSION_DENIED))
            local v, verr = s:get("k")
            assert(v == nil and errors.is(verr, errors.NOT_FOUND))
            return "ok"
            "#,
        );
    }

    #[test]
    fn full_store() {
        let (lua, _) = state(1);
        run(
            &lua,
            r#"
            local s = require("store").get("app:cache")
            assert(s:set("a", 1))
            local r, err = s:set("b", 2)
            assert(r == nil and errors.is(err, errors.INTERNAL), tostring(err))
            assert(s:set("a", 3) and s:get("a") == 3)
            return "ok"
            "#,
        );
    }
}
