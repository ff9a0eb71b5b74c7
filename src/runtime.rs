//! The node: owns every started entry (stores, hosts, services, servers), the process table and
//! the worker threads; starts entries in dependency order and stops them in reverse.

use crate::lua::compile::CompiledCode;
use crate::process::scheduler::{Pools, Scheduler};
use crate::process::table::ProcessTable;
use crate::registry::kinds::EntryId;
use crate::registry::Registry;
use crate::security::token::TokenStore;
use crate::security::{PolicySet, SecurityContext};
use crate::store::memory::MemoryStore;
use crate::store::sqlite::Sqlite;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// What the running code sees of the registry: entries, compiled code and policies, swapped
/// whole on reload.
pub struct Snapshot {
    pub registry: Arc<Registry>,
    pub code: HashMap<EntryId, Arc<CompiledCode>>,
    pub policies: Arc<PolicySet>,
}

#[derive(Default)]
pub struct Resources {
    pub dbs: HashMap<EntryId, Arc<Sqlite>>,
    pub memory_stores: HashMap<EntryId, Arc<MemoryStore>>,
    pub token_stores: HashMap<EntryId, Arc<TokenStore>>,
    pub running_hosts: HashSet<EntryId>,
}

pub struct Node {
    pub procs: Arc<ProcessTable>,
    pub scheduler: Arc<Scheduler>,
    pub snapshot: RwLock<Arc<Snapshot>>,
    pub resources: RwLock<Resources>,
    pub project_root: PathBuf,
    pub strict_mode: bool,
}

impl Node {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    pub fn code(&self, id: &EntryId) -> Option<Arc<CompiledCode>> {
        self.snapshot().code.get(id).cloned()
    }

    pub fn host_running(&self, id: &EntryId) -> bool {
        self.resources
            .read()
            .expect("resources lock")
            .running_hosts
            .contains(id)
    }

    pub fn db(&self, id: &EntryId) -> Option<Arc<Sqlite>> {
        self.resources
            .read()
            .expect("resources lock")
            .dbs
            .get(id)
            .cloned()
    }

    pub fn memory_store(&self, id: &EntryId) -> Option<Arc<MemoryStore>> {
        self.resources
            .read()
            .expect("resources lock")
            .memory_stores
            .get(id)
            .cloned()
    }

    pub fn token_store(&self, id: &EntryId) -> Option<Arc<TokenStore>> {
        self.resources
            .read()
            .expect("resources lock")
            .token_stores
            .get(id)
            .cloned()
    }
}

use crate::http::middleware::api_auth::ApiAuth;
use crate::http::middleware::cors::CorsConfig;
use crate::http::middleware::token_auth::TokenAuth;
use crate::http::router::{Chain, RouteTable, WsRelayOptions};
use crate::http::server::{self, ServerConfig, ServerHandle};
use crate::http::static_files::StaticSite;
use crate::lua::runner::{self, SpawnOptions};
use crate::process::supervisor::{self, ServiceHandle};
use crate::process::value::Value;
use crate::registry::kinds::{EntryKind, Router};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Compile(String),
    #[error("entry {id}: {message}")]
    Entry { id: EntryId, message: String },
}

#[derive(Clone)]
pub struct RunOptions {
    pub project_root: PathBuf,
    /// Replaces every `http.service` address (tests bind `127.0.0.1:0`).
    pub addr_override: Option<String>,
    /// Security strict mode (§7.1): permission checks without an actor and scope are denied.
    pub strict_mode: bool,
}

/// A started registry: the node plus the handles needed to stop what was started.
pub struct Runtime {
    pub node: Arc<Node>,
    services: Mutex<Vec<(EntryId, ServiceHandle)>>,
    servers: Arc<Mutex<Vec<(EntryId, ServerHandle)>>>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    opts: RunOptions,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Set once the initial start has finished (start failures then stop being fatal).
    booted: std::sync::atomic::AtomicBool,
}

/// What a reload did, for the log line and tests.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub added: Vec<EntryId>,
    pub removed: Vec<EntryId>,
    pub changed: Vec<EntryId>,
    pub restarted: Vec<EntryId>,
    /// Entries whose only change was a worker-pool size (see `RegistryDiff::resized`).
    pub resized: Vec<EntryId>,
    pub outdated: Vec<String>,
}

/// Compiles every Lua entry once; an error names the entry.
pub fn compile_all(registry: &Registry) -> Result<HashMap<EntryId, Arc<CompiledCode>>, StartError> {
    let mut code = HashMap::new();
    for e in registry.entries() {
        let (lua, is_process) = match &e.kind {
            EntryKind::LuaProcess(c) => (c, true),
            EntryKind::LuaFunction(c) => (c, false),
            _ => continue,
        };
        let compiled = crate::lua::compile::compile(&e.id, lua, is_process)
            .map_err(|m| StartError::Compile(format!("entry {}: {m}", e.id)))?;
        code.insert(e.id.clone(), compiled);
    }
    Ok(code)
}

pub fn build_policies(registry: &Registry) -> PolicySet {
    let (policies, errors) =
        PolicySet::build(registry.entries().iter().filter_map(|e| match &e.kind {
            EntryKind::Policy(p) => Some((&e.id, p)),
            _ => None,
        }));
    for e in errors {
        tracing::error!(error = %e, "policy rejected");
    }
    policies
}

fn router_chain(router_id: &EntryId, r: &Router) -> Chain {
    let has = |list: &[String], name: &str| list.iter().any(|m| m == name);
    Chain {
        router: Some(router_id.clone()),
        cors: has(&r.middleware, "cors").then(|| CorsConfig::from_options(&r.options)),
        token_auth: if has(&r.middleware, "token_auth") {
            TokenAuth::from_options(&r.options, &router_id.namespace)
        } else {
            None
        },
        api_auth: if has(&r.middleware, "api_auth") {
            ApiAuth::from_options(&r.options, &router_id.namespace)
        } else {
            None
        },
        ws_relay: has(&r.post_middleware, "websocket_relay")
            .then(|| WsRelayOptions::from_options(&r.post_options)),
        // Accepted in either list; either way it wraps the whole request.
        metrics: has(&r.middleware, "metrics") || has(&r.post_middleware, "metrics"),
    }
}

/// The route table of `server` from the registry's routers, endpoints and static mounts.
pub fn build_routes(
    registry: &Registry,
    server: &EntryId,
    project_root: &std::path::Path,
) -> RouteTable {
    let mut table = RouteTable::default();
    let mut chains: HashMap<EntryId, (Arc<Chain>, String)> = HashMap::new();
    for e in registry.entries() {
        if let EntryKind::Router(r) = &e.kind {
            if &r.server == server {
                chains.insert(
                    e.id.clone(),
                    (Arc::new(router_chain(&e.id, r)), r.prefix.clone()),
                );
            }
        }
    }
    for e in registry.entries() {
        match &e.kind {
            EntryKind::Endpoint(ep) => {
                let Some((chain, prefix)) = chains.get(&ep.router) else {
                    continue;
                };
                let path = format!("{}{}", prefix.trim_end_matches('/'), ep.path);
                if let Err(m) = table.add_endpoint(
                    &ep.method,
                    &path,
                    e.id.clone(),
                    ep.func.clone(),
                    chain.clone(),
                ) {
                    tracing::error!(endpoint = %e.id, "{m}; endpoint rejected");
                }
            }
            EntryKind::Static(st) if &st.server == server => {
                let Some(EntryKind::Directory(dir)) = registry.get(&st.fs).map(|d| &d.kind) else {
                    continue;
                };
                let root = if dir.directory.is_absolute() {
                    dir.directory.clone()
                } else {
                    project_root.join(&dir.directory)
                };
                if dir.auto_init {
                    let _ = std::fs::create_dir_all(&root);
                }
                match StaticSite::new(root.clone(), st.spa, st.index.clone(), st.cache.clone()) {
                    Ok(site) => {
                        let pseudo = Router {
                            server: server.clone(),
                            prefix: String::new(),
                            middleware: st.middleware.clone(),
                            options: st.options.clone(),
                            post_middleware: Vec::new(),
                            post_options: BTreeMap::new(),
                        };
                        table.add_static(
                            &st.path,
                            Arc::new(site),
                            Arc::new(router_chain(&e.id, &pseudo)),
                        );
                    }
                    Err(err) => {
                        tracing::error!(entry = %e.id, dir = %root.display(), error = %err, "static directory unavailable")
                    }
                }
            }
            _ => {}
        }
    }
    table
}

/// The connection pool is as large as the largest `http.service` `host.worker_count`, the
/// process pool as the largest `process.host` `host.workers`. A registry with only one of the
/// two kinds puts everything on one pool of that size.
fn worker_pools(registry: &Registry) -> Pools {
    let largest = |size: fn(&EntryKind) -> Option<usize>| {
        registry
            .entries()
            .iter()
            .filter_map(|e| size(&e.kind))
            .max()
    };
    let connection = largest(|k| match k {
        EntryKind::HttpService(s) => Some(s.worker_count),
        _ => None,
    });
    let process = largest(|k| match k {
        EntryKind::ProcessHost(h) => Some(h.workers),
        _ => None,
    });
    match (connection, process) {
        (Some(c), Some(p)) => Pools {
            connection_workers: c,
            process_workers: p,
        },
        (c, p) => Pools {
            connection_workers: c.or(p).unwrap_or_else(crate::registry::cpu_count),
            process_workers: 0,
        },
    }
}

impl Runtime {
    /// Starts every entry in dependency order. Fails on the first required entry that cannot
    /// start; what was started is stopped again.
    pub async fn start(registry: Registry, opts: RunOptions) -> Result<Runtime, StartError> {
        let code = compile_all(&registry)?;
        let policies = Arc::new(build_policies(&registry));
        let pools = worker_pools(&registry);
        let registry = Arc::new(registry);
        let node = Arc::new(Node {
            procs: Arc::new(ProcessTable::default()),
            scheduler: Scheduler::start(pools),
            snapshot: RwLock::new(Arc::new(Snapshot {
                registry: registry.clone(),
                code,
                policies,
            })),
            resources: RwLock::new(Resources::default()),
            project_root: opts.project_root.clone(),
            strict_mode: opts.strict_mode,
        });
        for w in registry.warnings() {
            tracing::warn!("{w}");
        }
        let rt = Runtime {
            node: node.clone(),
            services: Mutex::new(Vec::new()),
            servers: Arc::new(Mutex::new(Vec::new())),
            background: Mutex::new(Vec::new()),
            opts: opts.clone(),
            reloading: tokio::sync::Mutex::new(()),
            booted: std::sync::atomic::AtomicBool::new(false),
        };
        for id in registry.start_order() {
            let Some(entry) = registry.get(&id) else {
                continue;
            };
            if let Err(message) = rt.start_entry(entry).await {
                let optional = entry.kind.lifecycle().is_some_and(|l| l.startup_optional);
                if optional {
                    tracing::error!(entry = %id, error = %message, "optional entry failed to start");
                    continue;
                }
                rt.shutdown().await;
                return Err(StartError::Entry { id, message });
            }
        }
        rt.booted.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(rt)
    }

    async fn start_entry(&self, entry: &crate::registry::Entry) -> Result<(), String> {
        let node = &self.node;
        let opts = &self.opts;
        match &entry.kind {
            EntryKind::Sqlite(db) => {
                let handle =
                    Sqlite::open(&db.file, &node.project_root).map_err(|e| e.to_string())?;
                tracing::info!(entry = %entry.id, file = %db.file, "database opened");
                node.resources
                    .write()
                    .expect("resources lock")
                    .dbs
                    .insert(entry.id.clone(), handle);
            }
            EntryKind::MemoryStore(cfg) => {
                let store = Arc::new(MemoryStore::from_config(cfg));
                let sweeper = store.clone();
                let every = cfg
                    .cleanup_interval
                    .max(std::time::Duration::from_millis(100));
                self.background
                    .lock()
                    .expect("background lock")
                    .push(tokio::spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        loop {
                            tick.tick().await;
                            sweeper.sweep();
                        }
                    }));
                node.resources
                    .write()
                    .expect("resources lock")
                    .memory_stores
                    .insert(entry.id.clone(), store);
            }
            EntryKind::TokenStore(cfg) => {
                let store = node
                    .memory_store(&cfg.store)
                    .ok_or_else(|| format!("backing store {} is not running", cfg.store))?;
                if cfg.token_key.is_empty() {
                    tracing::warn!(entry = %entry.id, "token store has no token_key: tokens are not signed");
                } else if cfg.demo_key {
                    tracing::warn!(entry = %entry.id,
                        "token store uses the tutorial's published demo key; set token_key from ${{env:NAME}} before production");
                }
                let ts = Arc::new(TokenStore::new(cfg, store));
                node.resources
                    .write()
                    .expect("resources lock")
                    .token_stores
                    .insert(entry.id.clone(), ts);
            }
            EntryKind::ProcessHost(_) => {
                node.resources
                    .write()
                    .expect("resources lock")
                    .running_hosts
                    .insert(entry.id.clone());
            }
            EntryKind::Service(svc) if svc.lifecycle.auto_start => {
                let security = Arc::new(match &svc.lifecycle.security {
                    Some(spec) => node.snapshot().policies.context_from_spec(spec),
                    None => SecurityContext::default(),
                });
                let input: Vec<Value> = svc.input.iter().map(Value::from_json).collect();
                let (start_node, process, host) =
                    (node.clone(), svc.process.clone(), svc.host.clone());
                let start: Arc<supervisor::StartFn> = Arc::new(move || {
                    let code = start_node
                        .code(&process)
                        .ok_or_else(|| format!("process entry {process} not found"))?;
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let pid = runner::spawn_process(
                        &start_node,
                        code,
                        &host,
                        input.clone(),
                        security.clone(),
                        SpawnOptions {
                            on_exit: Some(tx),
                            ..Default::default()
                        },
                    )
                    .map_err(|e| e.message)?;
                    Ok((pid, rx))
                });
                let handle = supervisor::supervise(
                    entry.id.clone(),
                    svc.lifecycle.clone(),
                    node.procs.clone(),
                    start,
                );
                self.services
                    .lock()
                    .expect("services lock")
                    .push((entry.id.clone(), handle));
            }
            EntryKind::HttpService(h) if h.lifecycle.auto_start => {
                let routes = build_routes(&node.snapshot().registry, &entry.id, &node.project_root);
                let baseline = Arc::new(match &h.lifecycle.security {
                    Some(spec) => node.snapshot().policies.context_from_spec(spec),
                    None => SecurityContext::default(),
                });
                let cfg = ServerConfig {
                    id: entry.id.clone(),
                    addr: opts.addr_override.clone().unwrap_or_else(|| h.addr.clone()),
                    baseline,
                    ws_buffer: h.buffer_size,
                    max_connections: h.max_connections,
                    idle_timeout: h.idle_timeout,
                };
                match server::start(node.clone(), cfg, routes).await {
                    Ok(handle) => self
                        .servers
                        .lock()
                        .expect("servers lock")
                        .push((entry.id.clone(), handle)),
                    // At boot a server that cannot listen fails the start; after a reload the
                    // rest keeps running and the server retries with backoff (§9.2).
                    Err(e) if !self.booted.load(std::sync::atomic::Ordering::Relaxed) => {
                        return Err(format!("cannot listen on {}: {e}", h.addr));
                    }
                    Err(e) => {
                        tracing::error!(server = %entry.id, addr = %h.addr, error = %e, "cannot listen; retrying with backoff");
                        self.retry_bind(entry.clone(), h.lifecycle.clone());
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Keeps trying to bind a server whose address was taken, while its entry is unchanged.
    fn retry_bind(
        &self,
        entry: crate::registry::Entry,
        lifecycle: crate::registry::kinds::Lifecycle,
    ) {
        let (node, servers, opts) = (self.node.clone(), self.servers.clone(), self.opts.clone());
        let EntryKind::HttpService(h) = entry.kind.clone() else {
            return;
        };
        let wanted = format!("{:?}", entry.kind);
        self.background.lock().expect("background lock").push(tokio::spawn(async move {
            for attempt in 1u32.. {
                tokio::time::sleep(supervisor::backoff(&lifecycle, attempt)).await;
                let still_wanted = node
                    .snapshot()
                    .registry
                    .get(&entry.id)
                    .is_some_and(|e| format!("{:?}", e.kind) == wanted);
                if !still_wanted {
                    return;
                }
                let cfg = ServerConfig {
                    id: entry.id.clone(),
                    addr: opts.addr_override.clone().unwrap_or_else(|| h.addr.clone()),
                    baseline: Arc::new(match &h.lifecycle.security {
                        Some(spec) => node.snapshot().policies.context_from_spec(spec),
                        None => SecurityContext::default(),
                    }),
                    ws_buffer: h.buffer_size,
                    max_connections: h.max_connections,
                    idle_timeout: h.idle_timeout,
                };
                let routes = build_routes(&node.snapshot().registry, &entry.id, &node.project_root);
                match server::start(node.clone(), cfg, routes).await {
                    Ok(handle) => {
                        servers.lock().expect("servers lock").push((entry.id.clone(), handle));
                        return;
                    }
                    Err(e) => tracing::warn!(server = %entry.id, attempt, error = %e, "still cannot listen"),
                }
            }
        }));
    }

    async fn stop_entry(&self, id: &EntryId) -> bool {
        let service = {
            let mut services = self.services.lock().expect("services lock");
            services
                .iter()
                .position(|(s, _)| s == id)
                .map(|i| services.remove(i).1)
        };
        if let Some(s) = service {
            s.stop().await;
            return true;
        }
        let server = {
            let mut servers = self.servers.lock().expect("servers lock");
            servers
                .iter()
                .position(|(s, _)| s == id)
                .map(|i| servers.remove(i).1)
        };
        if let Some(s) = server {
            s.stop().await;
            return true;
        }
        let (db, host, was) = {
            let mut res = self.node.resources.write().expect("resources lock");
            let db = res.dbs.remove(id);
            let host = res.running_hosts.remove(id);
            let was = db.is_some()
                | res.memory_stores.remove(id).is_some()
                | res.token_stores.remove(id).is_some()
                | host;
            (db, host, was)
        };
        if let Some(db) = db {
            db.close();
        }
        if host {
            self.stop_host_processes(id).await;
        }
        was
    }

    /// Stopping a host cancels its processes, waits `stop_timeout`, then terminates the rest
    /// (§9.2); their monitors and links fire as for any exit.
    async fn stop_host_processes(&self, host: &EntryId) {
        let label = host.to_string();
        let on_host = || -> Vec<_> {
            self.node
                .procs
                .all()
                .into_iter()
                .filter(|p| p.pid.host() == label)
                .collect()
        };
        for p in on_host() {
            p.mailbox.push(crate::process::pid::Signal::Event(
                crate::process::pid::Event::Cancel {
                    from: None,
                    reason: "host stopping".into(),
                },
            ));
        }
        let stop_timeout = self
            .node
            .snapshot()
            .registry
            .get(host)
            .and_then(|e| e.kind.lifecycle().map(|l| l.stop_timeout))
            .unwrap_or(std::time::Duration::from_secs(10));
        let deadline = std::time::Instant::now() + stop_timeout;
        while !on_host().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for p in on_host() {
            p.mailbox.kill("terminated");
        }
    }

    /// The running child of service `id`, if it opted in to upgrades.
    fn upgradable_child(&self, id: &EntryId) -> Option<crate::process::pid::Pid> {
        let services = self.services.lock().expect("services lock");
        let pid = services
            .iter()
            .find(|(s, _)| s == id)?
            .1
            .pid
            .borrow()
            .clone()?;
        let proc = self.node.procs.get(pid.id())?;
        proc.upgradable
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(pid)
    }

    /// Applies a newly loaded registry as one transaction (§10): compile first (a failure
    /// changes nothing), swap the snapshot so new work uses new code and the route tables so
    /// new requests see new routes, then tell upgradable processes (OUTDATED), stop removed
    /// and changed entries (dependents first), and start changed and added ones in start order.
    pub async fn reload(&self, newer: Registry) -> Result<ReloadReport, StartError> {
        let _one_at_a_time = self.reloading.lock().await;
        let code = compile_all(&newer)?;
        let policies = Arc::new(build_policies(&newer));
        let old = self.node.snapshot();
        let diff = old.registry.diff(&newer);
        let mut report = ReloadReport {
            added: diff.added.clone(),
            removed: diff.removed.clone(),
            changed: diff.changed.clone(),
            resized: diff.resized.clone(),
            ..Default::default()
        };
        if diff.is_empty() {
            return Ok(report);
        }
        let newer = Arc::new(newer);
        *self.node.snapshot.write().expect("snapshot lock") = Arc::new(Snapshot {
            registry: newer.clone(),
            code,
            policies,
        });
        for w in newer.warnings() {
            tracing::warn!("{w}");
        }
        self.resize_pools(&newer);
        // Routes now, not after the restarts below: a service can take its whole stop_timeout
        // to stop, and route changes must not wait for it. A restarted server builds its own.
        for (id, server) in self.servers.lock().expect("servers lock").iter() {
            server.swap_routes(build_routes(&newer, id, &self.node.project_root));
        }
        let changed: HashSet<&EntryId> = diff.changed.iter().collect();
        // §10.2: OUTDATED names what changed among the process's own entry and its
        // (transitive) imports, plus its service when that entry changed; one event per process.
        let affecting = |entry: &EntryId| -> std::collections::BTreeSet<String> {
            let mut seen = HashSet::new();
            let mut todo = vec![entry.clone()];
            while let Some(id) = todo.pop() {
                if let Some(EntryKind::LuaProcess(c) | EntryKind::LuaFunction(c)) =
                    newer.get(&id).map(|e| &e.kind)
                {
                    todo.extend(c.imports.values().filter(|i| !seen.contains(*i)).cloned());
                }
                seen.insert(id);
            }
            seen.iter()
                .filter(|id| changed.contains(id))
                .map(|id| id.to_string())
                .collect()
        };
        type Outdated = (
            Arc<crate::process::table::ProcessEntry>,
            std::collections::BTreeSet<String>,
        );
        let mut outdated: BTreeMap<u64, Outdated> = BTreeMap::new();
        // Running processes of changed process.lua entries: only the upgradable ones act on it.
        for id in &diff.changed {
            if let Some(EntryKind::LuaProcess(_)) = newer.get(id).map(|e| &e.kind) {
                let label = id.to_string();
                let sources = affecting(id);
                for p in self.node.procs.all() {
                    if *p.entry() == *label {
                        outdated
                            .entry(p.pid.id())
                            .or_insert_with(|| (p.clone(), Default::default()))
                            .1
                            .extend(sources.iter().cloned());
                    }
                }
            }
        }
        // A changed service whose child opted in is not restarted; the child hears about it.
        let mut upgrading: HashSet<EntryId> = HashSet::new();
        for id in &diff.changed {
            let Some(EntryKind::Service(svc)) = newer.get(id).map(|e| &e.kind) else {
                continue;
            };
            let Some(pid) = self.upgradable_child(id) else {
                continue;
            };
            let Some(p) = self.node.procs.get(pid.id()) else {
                continue;
            };
            let slot = outdated
                .entry(pid.id())
                .or_insert_with(|| (p, Default::default()));
            slot.1.insert(id.to_string());
            slot.1.extend(affecting(&svc.process));
            upgrading.insert(id.clone());
        }
        for (p, sources) in outdated.into_values() {
            // The log names who will act on it; the others drop the event unread.
            if p.upgradable.load(std::sync::atomic::Ordering::Relaxed) {
                report.outdated.push(p.pid.to_string());
            }
            p.mailbox.push(crate::process::pid::Signal::Event(
                crate::process::pid::Event::Outdated {
                    sources: sources.into_iter().collect(),
                },
            ));
        }
        // Like shutdown: dependents stop before what they depend on.
        let removed: HashSet<&EntryId> = diff.removed.iter().collect();
        for id in old.registry.start_order().iter().rev() {
            if removed.contains(id) {
                self.stop_entry(id).await;
            }
        }
        let restart_kinds = |k: &EntryKind| {
            matches!(
                k,
                EntryKind::Service(_)
                    | EntryKind::HttpService(_)
                    | EntryKind::Sqlite(_)
                    | EntryKind::MemoryStore(_)
                    | EntryKind::TokenStore(_)
                    | EntryKind::ProcessHost(_)
            )
        };
        let (mut to_stop, mut to_start) = (Vec::new(), Vec::new());
        for id in newer.start_order() {
            let Some(entry) = newer.get(&id) else {
                continue;
            };
            if changed.contains(&id) && restart_kinds(&entry.kind) {
                if upgrading.contains(&id) {
                    continue;
                }
                // A memory store keeps its data unless its own settings changed.
                if let (EntryKind::MemoryStore(_), Some(old_entry)) =
                    (&entry.kind, old.registry.get(&id))
                {
                    if format!("{:?}", old_entry.kind) == format!("{:?}", entry.kind) {
                        continue;
                    }
                }
                to_stop.push(id.clone());
                report.restarted.push(id.clone());
                to_start.push(id);
            } else if diff.added.contains(&id) {
                to_start.push(id);
            }
        }
        for id in to_stop.iter().rev() {
            self.stop_entry(id).await;
        }
        for id in to_start {
            let Some(entry) = newer.get(&id) else {
                continue;
            };
            if let Err(message) = self.start_entry(entry).await {
                tracing::error!(entry = %id, error = %message, "entry failed to start after reload");
            }
        }
        Ok(report)
    }

    /// Brings the worker pools to the sizes `registry` asks for, without restarting anything.
    fn resize_pools(&self, registry: &Registry) {
        let wanted = worker_pools(registry);
        let before = self.node.scheduler.resize(wanted);
        if before != wanted {
            tracing::info!(
                connection_workers = wanted.connection_workers,
                process_workers = wanted.process_workers,
                was_connection_workers = before.connection_workers,
                was_process_workers = before.process_workers,
                "worker pools resized"
            );
        }
    }

    /// Where each HTTP server listens.
    pub fn http_addrs(&self) -> Vec<(EntryId, std::net::SocketAddr)> {
        self.servers
            .lock()
            .expect("servers lock")
            .iter()
            .map(|(id, h)| (id.clone(), h.addr))
            .collect()
    }

    /// Stops servers (WebSockets close with 1001), then services in reverse start order, then
    /// every remaining process, then closes the databases.
    pub async fn shutdown(&self) {
        let servers = std::mem::take(&mut *self.servers.lock().expect("servers lock"));
        for (_, s) in servers.into_iter().rev() {
            s.stop().await;
        }
        let services = std::mem::take(&mut *self.services.lock().expect("services lock"));
        for (_, s) in services.into_iter().rev() {
            s.stop().await;
        }
        for p in self.node.procs.all() {
            p.mailbox.kill("terminated");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.node.procs.alive() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for t in self.background.lock().expect("background lock").drain(..) {
            t.abort();
        }
        let dbs: Vec<_> = self
            .node
            .resources
            .read()
            .expect("resources lock")
            .dbs
            .values()
            .cloned()
            .collect();
        for db in dbs {
            db.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(entries: &str) -> Registry {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("registry");
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = format!("version: \"1.0\"\nnamespace: app\nentries:\n{entries}");
        std::fs::write(dir.join("_index.yaml"), yaml).unwrap();
        crate::registry::load(&dir, root.path(), &|_, _| Ok(())).unwrap_or_else(|d| panic!("{d:?}"))
    }

    const HTTP: &str = "  - name: gateway\n    kind: http.service\n    addr: \"127.0.0.1:0\"\n    host:\n      worker_count: 3\n";
    const HOST: &str = "  - name: processes\n    kind: process.host\n    host:\n      workers: 2\n";

    #[test]
    fn connections_and_hosts_get_pools_of_their_own_sizes() {
        let pools = worker_pools(&registry(&format!("{HTTP}{HOST}")));
        assert_eq!(
            pools,
            Pools {
                connection_workers: 3,
                process_workers: 2
            }
        );
    }

    #[test]
    fn a_registry_with_one_kind_runs_on_one_pool() {
        let only_hosts = worker_pools(&registry(HOST));
        assert_eq!(
            only_hosts,
            Pools {
                connection_workers: 2,
                process_workers: 0
            }
        );
        let only_http = worker_pools(&registry(HTTP));
        assert_eq!(
            only_http,
            Pools {
                connection_workers: 3,
                process_workers: 0
            }
        );
    }
}
