//! Typed registry entries: one struct per entry kind of the platform spec (§1.7).
//!
//! The loader (`load.rs`) turns raw YAML into these; everything downstream reads only these types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `namespace:name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    pub namespace: String,
    pub name: String,
}

impl EntryId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        EntryId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `ns:name`, or resolves a bare `name` in `default_ns`.
    pub fn resolve(reference: &str, default_ns: &str) -> Option<EntryId> {
        let reference = reference.trim();
        if reference.is_empty() {
            return None;
        }
        match reference.rsplit_once(':') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Some(EntryId::new(ns, name)),
            Some(_) => None,
            None => Some(EntryId::new(default_ns, reference)),
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.namespace, self.name)
    }
}

/// Where an entry was declared, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub file: PathBuf,
    pub line: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: EntryId,
    pub kind: EntryKind,
    pub meta: serde_json::Map<String, serde_json::Value>,
    pub origin: Origin,
    /// Files this entry's data was read from via `file://` (for hot reload).
    pub source_files: Vec<PathBuf>,
}

impl Entry {
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum EntryKind {
    Sqlite(SqliteDb),
    MemoryStore(MemoryStore),
    TokenStore(TokenStore),
    Policy(Policy),
    ProcessHost(ProcessHost),
    LuaProcess(LuaCode),
    LuaFunction(LuaCode),
    Service(Service),
    HttpService(HttpService),
    Router(Router),
    Endpoint(Endpoint),
    Directory(Directory),
    Static(StaticMount),
}

impl EntryKind {
    /// Whether `newer` differs from `self` at most in worker-pool sizes (`process.host`
    /// `host.workers` and its queue sizes, `http.service` `host.worker_count`): the pools are
    /// resized live, so such a change restarts nothing.
    pub fn same_but_pool_sizes(&self, newer: &EntryKind) -> bool {
        match (self, newer) {
            (EntryKind::ProcessHost(a), EntryKind::ProcessHost(b)) => {
                let sizeless = |h: &ProcessHost| ProcessHost {
                    workers: 0,
                    queue_size: 0,
                    local_queue_size: 0,
                    ..h.clone()
                };
                sizeless(a) == sizeless(b)
            }
            (EntryKind::HttpService(a), EntryKind::HttpService(b)) => {
                let sizeless = |s: &HttpService| HttpService {
                    worker_count: 0,
                    ..s.clone()
                };
                sizeless(a) == sizeless(b)
            }
            _ => false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            EntryKind::Sqlite(_) => "db.sql.sqlite",
            EntryKind::MemoryStore(_) => "store.memory",
            EntryKind::TokenStore(_) => "security.token_store",
            EntryKind::Policy(_) => "security.policy",
            EntryKind::ProcessHost(_) => "process.host",
            EntryKind::LuaProcess(_) => "process.lua",
            EntryKind::LuaFunction(_) => "function.lua",
            EntryKind::Service(_) => "process.service",
            EntryKind::HttpService(_) => "http.service",
            EntryKind::Router(_) => "http.router",
            EntryKind::Endpoint(_) => "http.endpoint",
            EntryKind::Directory(_) => "fs.directory",
            EntryKind::Static(_) => "http.static",
        }
    }

    pub fn lifecycle(&self) -> Option<&Lifecycle> {
        match self {
            EntryKind::Sqlite(e) => Some(&e.lifecycle),
            EntryKind::MemoryStore(e) => Some(&e.lifecycle),
            EntryKind::ProcessHost(e) => Some(&e.lifecycle),
            EntryKind::Service(e) => Some(&e.lifecycle),
            EntryKind::HttpService(e) => Some(&e.lifecycle),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lifecycle {
    pub auto_start: bool,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub stable_threshold: Duration,
    /// `requires` and legacy `depends_on`, merged and resolved.
    pub requires: Vec<EntryId>,
    pub startup_optional: bool,
    pub restart: RestartPolicy,
    pub security: Option<SecurityContextSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub backoff_factor: f64,
    pub jitter: f64,
    /// 0 = unlimited.
    pub max_attempts: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(90),
            backoff_factor: 2.0,
            jitter: 0.1,
            max_attempts: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecurityContextSpec {
    pub actor_id: Option<String>,
    pub actor_meta: serde_json::Map<String, serde_json::Value>,
    pub policies: Vec<EntryId>,
    pub groups: Vec<EntryId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqliteDb {
    /// Path (relative to the working directory) or `:memory:`.
    pub file: String,
    pub lifecycle: Lifecycle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemoryStore {
    pub max_size: usize,
    pub cleanup_interval: Duration,
    pub lifecycle: Lifecycle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenStore {
    pub store: EntryId,
    pub token_length: usize,
    pub default_expiration: Duration,
    /// Resolved key (after `${env:…}` and `token_key_env`); empty = unsigned tokens.
    pub token_key: String,
    /// True when the key is the tutorial's published demo key (the runtime warns).
    pub demo_key: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    pub allow: bool,
    pub conditions: Vec<Condition>,
    /// Group IDs this policy belongs to (`groups: [user]` in `app` ⇒ `app:user`).
    pub groups: Vec<EntryId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: String,
    pub operator: ConditionOp,
    pub value: ConditionValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConditionValue {
    Literal(serde_json::Value),
    From(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionOp {
    Eq,
    Ne,
    Lt,
    Gt,
    Lte,
    Gte,
    In,
    Nin,
    Contains,
    NContains,
    Matches,
    NMatches,
    Exists,
    NExists,
}

impl ConditionOp {
    pub fn parse(s: &str) -> Option<ConditionOp> {
        Some(match s {
            "eq" => ConditionOp::Eq,
            "ne" => ConditionOp::Ne,
            "lt" => ConditionOp::Lt,
            "gt" => ConditionOp::Gt,
            "lte" => ConditionOp::Lte,
            "gte" => ConditionOp::Gte,
            "in" => ConditionOp::In,
            "nin" => ConditionOp::Nin,
            "contains" => ConditionOp::Contains,
            "ncontains" => ConditionOp::NContains,
            "matches" => ConditionOp::Matches,
            "nmatches" => ConditionOp::NMatches,
            "exists" => ConditionOp::Exists,
            "nexists" => ConditionOp::NExists,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessHost {
    pub workers: usize,
    pub queue_size: usize,
    pub local_queue_size: usize,
    pub lifecycle: Lifecycle,
}

/// `process.lua` and `function.lua`.
#[derive(Debug, Clone, PartialEq)]
pub struct LuaCode {
    pub source: String,
    /// Name used in Lua error messages: the `file://` path when there is one, else the entry id.
    pub chunk_name: String,
    pub method: String,
    pub modules: Vec<String>,
    pub imports: BTreeMap<String, EntryId>,
    /// The most Lua heap one process (or one handler call) of this entry may hold
    /// (`max_memory`); `None` = no cap.
    pub max_memory: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub process: EntryId,
    pub host: EntryId,
    pub input: Vec<serde_json::Value>,
    pub lifecycle: Lifecycle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpService {
    /// As written (`":8081"`, `"127.0.0.1:0"`); `:port` means all interfaces.
    pub addr: String,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Per-connection outbound WebSocket queue (`host.buffer_size`).
    pub buffer_size: usize,
    /// Open connections (HTTP and WebSocket) at most (`host.max_connections`).
    pub max_connections: usize,
    /// Worker threads for connections, their handlers and relays (`host.worker_count`).
    pub worker_count: usize,
    pub lifecycle: Lifecycle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    pub server: EntryId,
    pub prefix: String,
    pub middleware: Vec<String>,
    pub options: BTreeMap<String, String>,
    pub post_middleware: Vec<String>,
    pub post_options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub router: EntryId,
    /// Upper-case.
    pub method: String,
    /// With `{name}` segments (`:name` already rewritten).
    pub path: String,
    pub func: EntryId,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Directory {
    pub directory: PathBuf,
    pub auto_init: bool,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StaticMount {
    pub server: EntryId,
    pub path: String,
    pub fs: EntryId,
    pub spa: bool,
    pub index: String,
    pub cache: Option<String>,
    pub middleware: Vec<String>,
    pub options: BTreeMap<String, String>,
}
