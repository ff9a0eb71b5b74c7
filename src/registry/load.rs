//! Typed stage: raw entries → typed [`Entry`] values, then the checks that need the whole
//! registry (references, duplicate prefixes and routes, cycles, Lua syntax). Every problem is
//! collected; the registry is returned only when there are none.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Map, Value};

use super::diag::Diagnostic;
use super::duration;
use super::kinds::*;
use super::order;
use super::raw::{self, display_path, keys, type_name, RawEntry, Seg, Span, YamlFile};
use super::size;
use super::Registry;

/// The tutorial's published HMAC key; the runtime warns when it is in use.
pub const DEMO_TOKEN_KEY: &str = "demo-secret-key-change-in-production";

/// Every kind this runtime knows, in spec order (§1.7).
/// Modules `require` can load (§2.2); an entry listing another is a load error.
pub const KNOWN_MODULES: &[&str] = &[
    "http", "json", "logger", "time", "crypto", "sql", "security", "store", "metrics",
];

pub const KNOWN_KINDS: &[&str] = &[
    "db.sql.sqlite",
    "store.memory",
    "security.token_store",
    "security.policy",
    "process.host",
    "process.lua",
    "function.lua",
    "process.service",
    "http.service",
    "http.router",
    "http.endpoint",
    "fs.directory",
    "http.static",
];

/// Middleware names and where they may appear.
const PRE_MIDDLEWARE: &[&str] = &["cors", "token_auth", "api_auth", "metrics"];
const POST_MIDDLEWARE: &[&str] = &["websocket_relay", "metrics"];

const HTTP_METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
];

const CONDITION_OPERATORS: &str =
    "eq, ne, lt, gt, lte, gte, in, nin, contains, ncontains, matches, nmatches, exists, nexists";

/// Loads the registry under `dir`. `project_root` is the working directory: base of
/// `file:///x`, of relative `fs.directory` paths, and the fence no `file://` may leave.
/// `lua_check(chunk_name, source)` reports a Lua syntax error as mlua's message.
pub fn load(
    dir: &Path,
    project_root: &Path,
    lua_check: &dyn Fn(&str, &str) -> Result<(), String>,
) -> Result<Registry, Vec<Diagnostic>> {
    load_with_env(dir, project_root, lua_check, &|name| {
        std::env::var(name).ok()
    })
}

/// [`load`] with an explicit environment (tests, or a runtime that snapshots it).
pub fn load_with_env(
    dir: &Path,
    project_root: &Path,
    lua_check: &dyn Fn(&str, &str) -> Result<(), String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Registry, Vec<Diagnostic>> {
    let root = canonical_root(project_root);
    let mut diags = Vec::new();
    let mut warnings = Vec::new();
    let set = raw::read(dir, &mut diags);

    // First definition of each id wins; later ones are reported and dropped.
    let mut first_at: HashMap<EntryId, usize> = HashMap::new();
    let mut unique: Vec<&RawEntry> = Vec::new();
    for entry in &set.entries {
        if let Some(&first) = first_at.get(&entry.id) {
            let first = &set.entries[first];
            let file = &set.files[entry.file];
            let first_file = &set.files[first.file].display;
            let mut place = first_file.display().to_string();
            if let Some(line) = first.line {
                place.push_str(&format!(":{line}"));
            }
            diags.push(
                Diagnostic::new(
                    &file.display,
                    format!("duplicate entry id (first defined at {place})"),
                )
                .at_line(entry.line)
                .in_entry(entry.id.to_string()),
            );
            continue;
        }
        first_at.insert(entry.id.clone(), unique.len());
        unique.push(entry);
    }

    let mut decoder = Decoder {
        root: &root,
        env,
        lua_check,
        diags: &mut diags,
        warnings: &mut warnings,
    };
    let decoded: Vec<Decoded> = unique
        .iter()
        .enumerate()
        .filter_map(|(i, raw_entry)| decoder.decode(i, raw_entry, &set.files[raw_entry.file]))
        .collect();

    let linker = Linker::new(&unique, &set.files, &decoded);
    linker.check_references(&mut diags);
    linker.check_http(&mut diags);
    let deps = linker.edges();
    linker.check_cycles(&deps, &mut diags);

    if !diags.is_empty() {
        diags.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        return Err(diags);
    }
    let entries = decoded.into_iter().map(|d| d.entry).collect();
    Ok(Registry::from_parts(entries, deps, set.scanned, warnings))
}

fn canonical_root(project_root: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(project_root) {
        return c;
    }
    let absolute = if project_root.is_absolute() {
        project_root.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(project_root))
            .unwrap_or_else(|_| project_root.to_path_buf())
    };
    raw::normalize(&absolute)
}

/// What a reference must point at.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Any,
    Kinds(&'static [&'static str]),
    /// A security group: some policy lists it in `groups`.
    Group,
}

#[derive(Debug, Clone)]
struct RefUse {
    path: Vec<Seg>,
    target: EntryId,
    expect: Expect,
}

/// A decoded entry; when `!ok` it had problems of its own and its data holds defaults, but
/// its references are still checked so every problem is reported in one pass.
struct Decoded {
    ok: bool,
    entry: Entry,
    /// Index into the de-duplicated raw entries.
    raw: usize,
    refs: Vec<RefUse>,
}

/// Per-load settings and sinks shared by every entry's decoding.
struct Decoder<'a> {
    root: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    lua_check: &'a dyn Fn(&str, &str) -> Result<(), String>,
    diags: &'a mut Vec<Diagnostic>,
    warnings: &'a mut Vec<Diagnostic>,
}

impl Decoder<'_> {
    /// `None` only for an unknown kind; otherwise the entry, possibly marked not `ok`.
    fn decode(&mut self, raw: usize, raw_entry: &RawEntry, file: &YamlFile) -> Option<Decoded> {
        let (root, env) = (self.root, self.env);
        let mut data = raw_entry.data.clone();
        let (problems, files) = raw::resolve_data(&mut data, &file.dir, root, env);
        let mut cx = Cx {
            id: &raw_entry.id,
            file,
            span: raw_entry.span,
            entry_line: raw_entry.line,
            data: &data,
            meta: &raw_entry.meta,
            root,
            env,
            diags: Vec::new(),
            warnings: Vec::new(),
            refs: Vec::new(),
            files,
        };
        for (path, message) in problems {
            cx.error_at(path, message);
        }

        let kind = match raw_entry.kind.as_str() {
            "db.sql.sqlite" => sqlite(&mut cx),
            "store.memory" => memory_store(&mut cx),
            "security.token_store" => token_store(&mut cx),
            "security.policy" => policy(&mut cx),
            "process.host" => process_host(&mut cx),
            "process.lua" => EntryKind::LuaProcess(lua_code(&mut cx, false)),
            "function.lua" => EntryKind::LuaFunction(lua_code(&mut cx, true)),
            "process.service" => service(&mut cx),
            "http.service" => http_service(&mut cx),
            "http.router" => router(&mut cx),
            "http.endpoint" => endpoint(&mut cx),
            "fs.directory" => directory(&mut cx),
            "http.static" => static_mount(&mut cx),
            other => {
                let d = cx.diag(
                    &keys(&["kind"]),
                    format!("unknown kind `{other}` (known: {})", KNOWN_KINDS.join(", ")),
                );
                self.diags.push(d);
                return None;
            }
        };
        cx.warn_unknown_fields(&raw_entry.kind);
        if let EntryKind::LuaProcess(code) | EntryKind::LuaFunction(code) = &kind {
            if cx.diags.is_empty() {
                cx.check_lua(code, self.lua_check);
            }
        }
        let ok = cx.diags.is_empty();
        self.diags.append(&mut cx.diags);
        self.warnings.append(&mut cx.warnings);
        Some(Decoded {
            ok,
            entry: Entry {
                id: raw_entry.id.clone(),
                kind,
                meta: raw_entry.meta.clone(),
                origin: Origin {
                    file: file.display.clone(),
                    line: raw_entry.line,
                },
                source_files: cx.files.iter().map(|f| f.canonical.clone()).collect(),
            },
            raw,
            refs: cx.refs,
        })
    }
}

/// Decoding context of one entry: typed getters that report problems with the entry's
/// file, line and field.
struct Cx<'a> {
    id: &'a EntryId,
    file: &'a YamlFile,
    span: Option<Span>,
    entry_line: Option<usize>,
    data: &'a Map<String, Value>,
    meta: &'a Map<String, Value>,
    root: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    refs: Vec<RefUse>,
    files: Vec<raw::FileRef>,
}

impl<'a> Cx<'a> {
    fn diag(&self, path: &[Seg], message: impl Into<String>) -> Diagnostic {
        let mut d = Diagnostic::new(&self.file.display, message)
            .at_line(self.file.line_of(self.span, path).or(self.entry_line))
            .in_entry(self.id.to_string());
        if !path.is_empty() {
            d = d.in_field(display_path(path));
        }
        d
    }

    fn error_at(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        let d = self.diag(&path, message);
        self.diags.push(d);
    }

    fn error(&mut self, path: &[&str], message: impl Into<String>) {
        self.error_at(keys(path), message);
    }

    fn warn(&mut self, path: &[&str], message: impl Into<String>) {
        let d = self.diag(&keys(path), message);
        self.warnings.push(d);
    }

    /// The value at `path` (`meta.*` reads the entry's meta); YAML `null` counts as absent.
    fn get(&self, path: &[&str]) -> Option<&'a Value> {
        let (first, rest) = path.split_first()?;
        let (start, rest) = if *first == "meta" {
            let (key, rest) = rest.split_first()?;
            (self.meta.get(*key)?, rest)
        } else {
            (self.data.get(*first)?, rest)
        };
        descend(start, rest)
    }

    fn mistyped(&mut self, path: &[&str], expected: &str, found: &Value) {
        self.error(
            path,
            format!("expected {expected}, found {}", type_name(found)),
        );
    }

    fn string(&mut self, path: &[&str]) -> Option<String> {
        match self.get(path)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.mistyped(path, "a string", other);
                None
            }
        }
    }

    fn required_string(&mut self, path: &[&str]) -> Option<String> {
        if self.get(path).is_none() {
            self.error(path, "missing required field");
            return None;
        }
        let s = self.string(path)?;
        if s.trim().is_empty() {
            self.error(path, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, path: &[&str], default: bool) -> bool {
        match self.get(path) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.mistyped(path, "true or false", other);
                default
            }
        }
    }

    /// A non-negative integer; `0` means "use the default".
    fn count(&mut self, path: &[&str], default: usize) -> usize {
        match self.get(path) {
            None => default,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(0) => default,
                Some(v) => v as usize,
                None => {
                    self.error(path, format!("expected a non-negative integer, found {n}"));
                    default
                }
            },
            Some(other) => {
                self.mistyped(path, "a non-negative integer", other);
                default
            }
        }
    }

    fn number(&mut self, path: &[&str], default: f64) -> f64 {
        match self.get(path) {
            None => default,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(default),
            Some(other) => {
                self.mistyped(path, "a number", other);
                default
            }
        }
    }

    /// Go duration string (or `0`). `None` when absent.
    fn opt_duration(&mut self, path: &[&str]) -> Option<Duration> {
        match self.get(path)? {
            Value::String(s) => match duration::parse(s) {
                Ok(d) => Some(d),
                Err(_) => {
                    self.error(
                        path,
                        format!("invalid duration {s:?} (expected Go syntax like \"500ms\" or \"1h30m\")"),
                    );
                    None
                }
            },
            Value::Number(n) if n.as_f64() == Some(0.0) => Some(Duration::ZERO),
            other => {
                self.mistyped(path, "a duration string like \"5s\"", other);
                None
            }
        }
    }

    /// A byte size (`64MB` or a number of bytes), greater than zero. `None` when absent.
    fn opt_size(&mut self, path: &[&str]) -> Option<usize> {
        let parsed = match self.get(path)? {
            Value::String(s) => size::parse(s),
            Value::Number(n) => n
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| format!("expected a whole number of bytes, found {n}")),
            other => {
                self.mistyped(path, "a size like \"64MB\"", other);
                return None;
            }
        };
        match parsed {
            Ok(0) => {
                self.error(path, "must be greater than zero");
                None
            }
            Ok(bytes) => Some(bytes),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    fn duration(&mut self, path: &[&str], default: Duration) -> Duration {
        self.opt_duration(path).unwrap_or(default)
    }

    fn mapping(&mut self, path: &[&str]) -> Option<&'a Map<String, Value>> {
        match self.get(path)? {
            Value::Object(m) => Some(m),
            other => {
                self.mistyped(path, "a mapping", other);
                None
            }
        }
    }

    fn list(&mut self, path: &[&str]) -> Option<&'a Vec<Value>> {
        match self.get(path)? {
            Value::Array(items) => Some(items),
            other => {
                self.mistyped(path, "a list", other);
                None
            }
        }
    }

    /// A list of strings (absent → empty).
    fn strings(&mut self, path: &[&str]) -> Vec<String> {
        let Some(items) = self.list(path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => {
                    let mut p = keys(path);
                    p.push(Seg::Index(i));
                    self.error_at(p, format!("expected a string, found {}", type_name(other)));
                }
            }
        }
        out
    }

    fn parse_ref(&mut self, seg_path: Vec<Seg>, text: &str, expect: Expect) -> Option<EntryId> {
        match EntryId::resolve(text, &self.id.namespace) {
            Some(target) => {
                self.refs.push(RefUse {
                    path: seg_path,
                    target: target.clone(),
                    expect,
                });
                Some(target)
            }
            None => {
                self.error_at(
                    seg_path,
                    format!("invalid reference {text:?} (expected `ns:name` or `name`)"),
                );
                None
            }
        }
    }

    fn reference(&mut self, path: &[&str], expect: Expect) -> Option<EntryId> {
        let text = self.required_string(path)?;
        self.parse_ref(keys(path), &text, expect)
    }

    fn references(&mut self, path: &[&str], expect: Expect) -> Vec<EntryId> {
        let Some(items) = self.list(path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let mut p = keys(path);
            p.push(Seg::Index(i));
            match item {
                Value::String(s) => {
                    if let Some(id) = self.parse_ref(p, s, expect) {
                        if !out.contains(&id) {
                            out.push(id);
                        }
                    }
                }
                other => self.error_at(p, format!("expected a string, found {}", type_name(other))),
            }
        }
        out
    }

    /// `name.opt: value` maps; scalar values become strings, lists are comma-joined.
    fn options(&mut self, path: &[&str]) -> BTreeMap<String, String> {
        let Some(map) = self.mapping(path) else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Bool(_) | Value::Number(_) => v.to_string(),
                Value::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                Value::Object(_) => v.to_string(),
            };
            out.insert(k.clone(), text);
        }
        out
    }

    fn check_middleware(&mut self, path: &[&str], names: &[String], post: bool) {
        let (allowed, other, here, there) = if post {
            (POST_MIDDLEWARE, PRE_MIDDLEWARE, "post-match", "middleware")
        } else {
            (
                PRE_MIDDLEWARE,
                POST_MIDDLEWARE,
                "pre-match",
                "post_middleware",
            )
        };
        for (i, name) in names.iter().enumerate() {
            if allowed.contains(&name.as_str()) {
                continue;
            }
            let mut p = keys(path);
            p.push(Seg::Index(i));
            if other.contains(&name.as_str()) {
                self.error_at(
                    p,
                    format!("`{name}` is not a {here} middleware; list it under `{there}`"),
                );
            } else {
                let mut known: Vec<&str> = PRE_MIDDLEWARE
                    .iter()
                    .chain(POST_MIDDLEWARE)
                    .copied()
                    .collect();
                known.sort();
                known.dedup();
                self.error_at(
                    p,
                    format!("unknown middleware `{name}` (known: {})", known.join(", ")),
                );
            }
        }
    }

    /// `api_auth` needs a database; its token store and permission policies are references.
    fn api_auth_options(&mut self, middleware: &[String], options: &mut BTreeMap<String, String>) {
        if !middleware.iter().any(|m| m == "api_auth") {
            return;
        }
        if !options.contains_key("api_auth.db") {
            self.error(
                &["options"],
                "`api_auth` needs option `api_auth.db` (a db.sql.sqlite entry)",
            );
        }
        self.option_reference(
            options,
            "options",
            "api_auth.db",
            Expect::Kinds(&["db.sql.sqlite"]),
        );
        self.option_reference(
            options,
            "options",
            "api_auth.token_store",
            Expect::Kinds(&["security.token_store"]),
        );
        let policy_keys: Vec<String> = options
            .keys()
            .filter(|k| k.starts_with("api_auth.policy."))
            .cloned()
            .collect();
        for key in policy_keys {
            self.option_reference(
                options,
                "options",
                &key,
                Expect::Kinds(&["security.policy"]),
            );
        }
        if let Some(window) = options.get("api_auth.window").cloned() {
            if crate::registry::duration::parse(&window).is_err() {
                self.error(
                    &["options", "api_auth.window"],
                    format!("invalid duration {window:?}"),
                );
            }
        }
    }

    /// `token_auth.store` names a token store: check it like any reference and store the
    /// fully qualified id so the HTTP layer need not know the router's namespace.
    fn option_reference(
        &mut self,
        options: &mut BTreeMap<String, String>,
        options_key: &str,
        key: &str,
        expect: Expect,
    ) {
        let Some(text) = options.get(key).cloned() else {
            return;
        };
        let path = vec![Seg::Key(options_key.into()), Seg::Key(key.into())];
        if let Some(id) = self.parse_ref(path, &text, expect) {
            options.insert(key.to_string(), id.to_string());
        }
    }

    fn lifecycle(&mut self) -> Lifecycle {
        const L: &str = "lifecycle";
        if self.mapping(&[L]).is_none() {
            return default_lifecycle();
        }
        let mut requires = self.references(&[L, "requires"], Expect::Any);
        for id in self.references(&[L, "depends_on"], Expect::Any) {
            if !requires.contains(&id) {
                requires.push(id);
            }
        }
        let startup_optional = match self.string(&[L, "startup"]).as_deref() {
            None | Some("required") => false,
            Some("optional") => true,
            Some(other) => {
                self.error(
                    &[L, "startup"],
                    format!("invalid startup {other:?} (expected `required` or `optional`)"),
                );
                false
            }
        };
        let defaults = RestartPolicy::default();
        let backoff_factor =
            self.number(&[L, "restart", "backoff_factor"], defaults.backoff_factor);
        if backoff_factor < 1.0 {
            self.error(&[L, "restart", "backoff_factor"], "must be at least 1.0");
        }
        let jitter = self.number(&[L, "restart", "jitter"], defaults.jitter);
        if !(0.0..=1.0).contains(&jitter) {
            self.error(&[L, "restart", "jitter"], "must be between 0 and 1");
        }
        let max_attempts = self.count(&[L, "restart", "max_attempts"], 0);
        let restart = RestartPolicy {
            initial_delay: self.duration(&[L, "restart", "initial_delay"], defaults.initial_delay),
            max_delay: self.duration(&[L, "restart", "max_delay"], defaults.max_delay),
            backoff_factor,
            jitter,
            max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
        };
        let security = self.mapping(&[L, "security"]).map(|_| {
            let actor_meta = self
                .mapping(&[L, "security", "actor", "meta"])
                .cloned()
                .unwrap_or_default();
            SecurityContextSpec {
                actor_id: self.string(&[L, "security", "actor", "id"]),
                actor_meta,
                policies: self.references(
                    &[L, "security", "policies"],
                    Expect::Kinds(&["security.policy"]),
                ),
                groups: self.references(&[L, "security", "groups"], Expect::Group),
            }
        });
        Lifecycle {
            auto_start: self.boolean(&[L, "auto_start"], false),
            start_timeout: self.duration(&[L, "start_timeout"], Duration::from_secs(10)),
            stop_timeout: self.duration(&[L, "stop_timeout"], Duration::from_secs(10)),
            stable_threshold: self.duration(&[L, "stable_threshold"], Duration::from_secs(5)),
            requires,
            startup_optional,
            restart,
            security,
        }
    }

    fn warn_unknown_fields(&mut self, kind: &str) {
        let known: &[&str] = match kind {
            "db.sql.sqlite" => &["file", "pool", "options"],
            "store.memory" => &["max_size", "cleanup_interval"],
            "security.token_store" => &[
                "store",
                "token_length",
                "default_expiration",
                "token_key",
                "token_key_env",
            ],
            "security.policy" => &["policy", "groups"],
            "process.host" => &["host"],
            "process.lua" => &["source", "method", "modules", "imports", "max_memory"],
            "function.lua" => &[
                "source",
                "method",
                "modules",
                "imports",
                "pool",
                "max_memory",
            ],
            "process.service" => &["process", "host", "input"],
            "http.service" => &["addr", "timeouts", "host", "tls", "network"],
            "http.router" => &[
                "prefix",
                "middleware",
                "options",
                "post_middleware",
                "post_options",
            ],
            "http.endpoint" => &["method", "path", "func"],
            "fs.directory" => &["directory", "auto_init", "mode", "base"],
            "http.static" => &["path", "fs", "static_options", "middleware", "options"],
            _ => return,
        };
        let unknown: Vec<String> = self
            .data
            .keys()
            .filter(|k| k.as_str() != "lifecycle" && !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            self.warn(
                &[key.as_str()],
                format!("unknown field for {kind} (ignored)"),
            );
        }
    }

    fn check_lua(&mut self, code: &LuaCode, lua_check: &dyn Fn(&str, &str) -> Result<(), String>) {
        let Err(message) = lua_check(&code.chunk_name, &code.source) else {
            return;
        };
        let (lua_line, text) = split_lua_error(&message);
        let from_file = self.files.iter().any(|f| f.path == keys(&["source"]));
        let d = if from_file {
            Diagnostic::new(&code.chunk_name, format!("syntax error: {text}"))
                .at_line(lua_line)
                .in_entry(self.id.to_string())
        } else {
            let text = match lua_line {
                Some(l) => format!("syntax error at Lua line {l}: {text}"),
                None => format!("syntax error: {text}"),
            };
            self.diag(&keys(&["source"]), text)
        };
        self.diags.push(d);
    }
}

fn descend<'v>(mut cur: &'v Value, rest: &[&str]) -> Option<&'v Value> {
    for key in rest {
        cur = cur.as_object()?.get(*key)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// `[string "x.lua"]:3: msg` / `x.lua:3: msg` (possibly after mlua's `syntax error: `) →
/// `(Some(3), "msg")`.
fn split_lua_error(message: &str) -> (Option<usize>, String) {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r#"(?:\[string "[^"]*"\]|[^\s:\[\]]+):(\d+): (.*)"#).expect("valid regex")
    });
    let first = message.lines().next().unwrap_or_default();
    match re.captures(first) {
        Some(c) => (c[1].parse().ok(), c[2].trim().to_string()),
        None => (None, first.trim().to_string()),
    }
}

fn default_lifecycle() -> Lifecycle {
    Lifecycle {
        auto_start: false,
        start_timeout: Duration::from_secs(10),
        stop_timeout: Duration::from_secs(10),
        stable_threshold: Duration::from_secs(5),
        requires: Vec::new(),
        startup_optional: false,
        restart: RestartPolicy::default(),
        security: None,
    }
}

/// The default worker count of `process.host` and `http.service`.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

// ---- one decoder per kind (§1.7) ----

fn sqlite(cx: &mut Cx) -> EntryKind {
    let file = cx.required_string(&["file"]).unwrap_or_default();
    cx.opt_duration(&["pool", "max_lifetime"]);
    EntryKind::Sqlite(SqliteDb {
        file,
        lifecycle: cx.lifecycle(),
    })
}

fn memory_store(cx: &mut Cx) -> EntryKind {
    let cleanup = cx.duration(&["cleanup_interval"], Duration::from_secs(300));
    EntryKind::MemoryStore(MemoryStore {
        max_size: cx.count(&["max_size"], 10_000),
        cleanup_interval: if cleanup.is_zero() {
            Duration::from_secs(300)
        } else {
            cleanup
        },
        lifecycle: cx.lifecycle(),
    })
}

fn token_store(cx: &mut Cx) -> EntryKind {
    let store = cx.reference(&["store"], Expect::Kinds(&["store.memory"]));
    let token_length = match cx.get(&["token_length"]) {
        Some(Value::Number(n)) if n.as_u64() == Some(0) => {
            cx.error(&["token_length"], "must be greater than 0");
            32
        }
        _ => cx.count(&["token_length"], 32),
    };
    let default_expiration = cx.duration(&["default_expiration"], Duration::from_secs(86_400));
    let mut token_key = cx.string(&["token_key"]).unwrap_or_default();
    if let Some(var) = cx.string(&["token_key_env"]) {
        match (cx.env)(var.trim()).filter(|v| !v.is_empty()) {
            Some(value) => token_key = value,
            None => cx.warn(
                &["token_key_env"],
                format!(
                    "environment variable `{}` is not set; keeping `token_key`",
                    var.trim()
                ),
            ),
        }
    }
    EntryKind::TokenStore(TokenStore {
        store: store.unwrap_or_else(|| cx.id.clone()),
        token_length,
        default_expiration,
        demo_key: token_key == DEMO_TOKEN_KEY,
        token_key,
    })
}

fn policy(cx: &mut Cx) -> EntryKind {
    let actions = pattern_list(cx, &["policy", "actions"]);
    let resources = pattern_list(cx, &["policy", "resources"]);
    let allow = match cx.required_string(&["policy", "effect"]).as_deref() {
        Some("allow") => true,
        Some("deny") | None => false,
        Some(other) => {
            cx.error(
                &["policy", "effect"],
                format!("invalid effect {other:?} (expected `allow` or `deny`)"),
            );
            false
        }
    };
    let mut conditions = Vec::new();
    if let Some(items) = cx.list(&["policy", "conditions"]) {
        for (i, item) in items.iter().enumerate() {
            if let Some(c) = condition(cx, i, item) {
                conditions.push(c);
            }
        }
    }
    let mut groups = Vec::new();
    for (i, name) in cx.strings(&["groups"]).into_iter().enumerate() {
        match EntryId::resolve(&name, &cx.id.namespace) {
            Some(g) if !groups.contains(&g) => groups.push(g),
            Some(_) => {}
            None => cx.error_at(
                vec![Seg::Key("groups".into()), Seg::Index(i)],
                format!("invalid group name {name:?}"),
            ),
        }
    }
    EntryKind::Policy(Policy {
        actions,
        resources,
        allow,
        conditions,
        groups,
    })
}

/// `"*"`, one pattern, or a non-empty list of patterns.
fn pattern_list(cx: &mut Cx, path: &[&str]) -> Vec<String> {
    match cx.get(path) {
        None => {
            cx.error(path, "missing required field");
            Vec::new()
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            cx.error(path, "must not be empty");
            Vec::new()
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.is_empty() => {
            cx.error(path, "must not be an empty list");
            Vec::new()
        }
        Some(Value::Array(_)) => cx.strings(path),
        Some(other) => {
            cx.mistyped(path, "a string or a list of strings", other);
            Vec::new()
        }
    }
}

fn condition(cx: &mut Cx, i: usize, item: &Value) -> Option<Condition> {
    let at = |k: &str| {
        let mut p = keys(&["policy", "conditions"]);
        p.push(Seg::Index(i));
        if !k.is_empty() {
            p.push(Seg::Key(k.into()));
        }
        p
    };
    let Some(map) = item.as_object() else {
        cx.error_at(
            at(""),
            format!("expected a mapping, found {}", type_name(item)),
        );
        return None;
    };
    let text = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or("")
    };
    let field = text("field");
    if field.is_empty() {
        cx.error_at(at("field"), "missing or empty condition field");
    }
    let op_text = text("operator");
    let operator = if op_text.is_empty() {
        cx.error_at(at("operator"), "missing or empty condition operator");
        None
    } else {
        let op = ConditionOp::parse(op_text);
        if op.is_none() {
            cx.error_at(
                at("operator"),
                format!("unknown operator {op_text:?} (known: {CONDITION_OPERATORS})"),
            );
        }
        op
    };
    let value = match (map.get("value"), map.get("value_from")) {
        (Some(_), Some(_)) => {
            cx.error_at(
                at("value_from"),
                "give either `value` or `value_from`, not both",
            );
            None
        }
        (Some(v), None) => Some(ConditionValue::Literal(v.clone())),
        (None, Some(Value::String(f))) if !f.trim().is_empty() => {
            Some(ConditionValue::From(f.trim().to_string()))
        }
        (None, Some(other)) => {
            cx.error_at(
                at("value_from"),
                format!("expected a field name, found {}", type_name(other)),
            );
            None
        }
        (None, None) if matches!(operator, Some(ConditionOp::Exists | ConditionOp::NExists)) => {
            Some(ConditionValue::Literal(Value::Null))
        }
        (None, None) => {
            cx.error_at(at(""), "condition needs `value` or `value_from`");
            None
        }
    };
    if let (Some(ConditionOp::Matches | ConditionOp::NMatches), Some(ConditionValue::Literal(v))) =
        (operator, &value)
    {
        match v {
            Value::String(pattern) => {
                if let Err(e) = regex::Regex::new(pattern) {
                    let first = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    cx.error_at(at("value"), format!("invalid regex {pattern:?}: {first}"));
                }
            }
            other => cx.error_at(
                at("value"),
                format!("expected a regex string, found {}", type_name(other)),
            ),
        }
    }
    if field.is_empty() {
        return None;
    }
    Some(Condition {
        field: field.to_string(),
        operator: operator?,
        value: value?,
    })
}

fn process_host(cx: &mut Cx) -> EntryKind {
    cx.mapping(&["host"]);
    // Wippy sizes its work-stealing scheduler's queues with these; moonwire's workers keep no
    // shared run queue (a process stays on its worker), so a value set here changes nothing.
    for field in ["queue_size", "local_queue_size"] {
        if cx.get(&["host", field]).is_some() {
            cx.warn(
                &["host", field],
                "accepted for compatibility; moonwire's scheduler has no such queue, so it has no effect",
            );
        }
    }
    EntryKind::ProcessHost(ProcessHost {
        workers: cx.count(&["host", "workers"], cpu_count()),
        queue_size: cx.count(&["host", "queue_size"], 1024),
        local_queue_size: cx.count(&["host", "local_queue_size"], 256),
        lifecycle: cx.lifecycle(),
    })
}

fn lua_code(cx: &mut Cx, function: bool) -> LuaCode {
    let source = match cx.get(&["source"]) {
        None => {
            cx.error(&["source"], "missing required field");
            String::new()
        }
        _ => cx.string(&["source"]).unwrap_or_default(),
    };
    let chunk_name = cx
        .files
        .iter()
        .find(|f| f.path == keys(&["source"]))
        .map(|f| f.rel.clone())
        .unwrap_or_else(|| cx.id.to_string());
    let method = cx.required_string(&["method"]).unwrap_or_default();
    let modules = cx.strings(&["modules"]);
    for (i, m) in modules.iter().enumerate() {
        if !KNOWN_MODULES.contains(&m.as_str()) {
            cx.error_at(
                vec![Seg::Key("modules".into()), Seg::Index(i)],
                format!("unknown module `{m}` (known: {})", KNOWN_MODULES.join(", ")),
            );
        }
    }
    let mut imports = BTreeMap::new();
    if let Some(map) = cx.mapping(&["imports"]) {
        for (alias, target) in map {
            let path = vec![Seg::Key("imports".into()), Seg::Key(alias.clone())];
            match target {
                Value::String(t) => {
                    if let Some(id) =
                        cx.parse_ref(path, t, Expect::Kinds(&["function.lua", "process.lua"]))
                    {
                        imports.insert(alias.clone(), id);
                    }
                }
                other => cx.error_at(
                    path,
                    format!("expected an entry id, found {}", type_name(other)),
                ),
            }
        }
    }
    if function {
        if let Some(kind) = cx.string(&["pool", "type"]) {
            if !matches!(kind.as_str(), "inline" | "lazy" | "static" | "adaptive") {
                cx.error(
                    &["pool", "type"],
                    format!(
                        "invalid pool type {kind:?} (expected inline, lazy, static or adaptive)"
                    ),
                );
            }
        }
    }
    let max_memory = cx.opt_size(&["max_memory"]);
    LuaCode {
        source,
        chunk_name,
        method,
        modules,
        imports,
        max_memory,
    }
}

fn service(cx: &mut Cx) -> EntryKind {
    let process = cx.reference(&["process"], Expect::Kinds(&["process.lua"]));
    let host = cx.reference(&["host"], Expect::Kinds(&["process.host"]));
    let input = cx.list(&["input"]).cloned().unwrap_or_default();
    EntryKind::Service(Service {
        process: process.unwrap_or_else(|| cx.id.clone()),
        host: host.unwrap_or_else(|| cx.id.clone()),
        input,
        lifecycle: cx.lifecycle(),
    })
}

fn http_service(cx: &mut Cx) -> EntryKind {
    let addr = cx.required_string(&["addr"]).unwrap_or_default();
    if !addr.is_empty() {
        if let Err(e) = check_addr(&addr) {
            cx.error(&["addr"], e);
        }
    }
    let timeout = |cx: &mut Cx, k: &str| cx.opt_duration(&["timeouts", k]).filter(|d| !d.is_zero());
    let read_timeout = timeout(cx, "read");
    let write_timeout = timeout(cx, "write");
    let idle_timeout = timeout(cx, "idle");
    let worker_count = cx.count(&["host", "worker_count"], cpu_count());
    if let Some(mode) = cx.string(&["tls", "mode"]) {
        if !mode.trim().is_empty() {
            cx.error(
                &["tls", "mode"],
                "TLS is not supported; terminate TLS in front of moonwire",
            );
        }
    }
    EntryKind::HttpService(HttpService {
        addr,
        read_timeout,
        write_timeout,
        idle_timeout,
        buffer_size: cx.count(&["host", "buffer_size"], 1024),
        max_connections: cx.count(&["host", "max_connections"], 65_536),
        worker_count,
        lifecycle: cx.lifecycle(),
    })
}

/// `":8081"`, `"127.0.0.1:0"`, `"[::1]:80"`.
fn check_addr(addr: &str) -> Result<(), String> {
    let bad = || format!("invalid address {addr:?} (expected `host:port` or `:port`)");
    let (_, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map(|_| ()).map_err(|_| bad())
}

fn router(cx: &mut Cx) -> EntryKind {
    let server = cx.reference(&["meta", "server"], Expect::Kinds(&["http.service"]));
    let mut prefix = cx
        .string(&["prefix"])
        .unwrap_or_default()
        .trim()
        .to_string();
    while prefix.ends_with('/') {
        prefix.pop();
    }
    if !prefix.is_empty() && !prefix.starts_with('/') {
        cx.error(
            &["prefix"],
            format!("prefix {prefix:?} must start with `/`"),
        );
    }
    let middleware = cx.strings(&["middleware"]);
    cx.check_middleware(&["middleware"], &middleware, false);
    let mut options = cx.options(&["options"]);
    cx.option_reference(
        &mut options,
        "options",
        "token_auth.store",
        Expect::Kinds(&["security.token_store"]),
    );
    cx.api_auth_options(&middleware, &mut options);
    let post_middleware = cx.strings(&["post_middleware"]);
    cx.check_middleware(&["post_middleware"], &post_middleware, true);
    let post_options = cx.options(&["post_options"]);
    EntryKind::Router(Router {
        server: server.unwrap_or_else(|| cx.id.clone()),
        prefix,
        middleware,
        options,
        post_middleware,
        post_options,
    })
}

fn endpoint(cx: &mut Cx) -> EntryKind {
    let router = cx.reference(&["meta", "router"], Expect::Kinds(&["http.router"]));
    let method = cx
        .required_string(&["method"])
        .unwrap_or_default()
        .trim()
        .to_uppercase();
    if !method.is_empty() && !HTTP_METHODS.contains(&method.as_str()) {
        cx.error(
            &["method"],
            format!(
                "invalid method {method:?} (expected one of {})",
                HTTP_METHODS.join(", ")
            ),
        );
    }
    let path = match cx.required_string(&["path"]) {
        Some(p) => match route_path(p.trim()) {
            Ok(p) => p,
            Err(e) => {
                cx.error(&["path"], e);
                String::new()
            }
        },
        None => String::new(),
    };
    let func = cx.reference(&["func"], Expect::Kinds(&["function.lua"]));
    EntryKind::Endpoint(Endpoint {
        router: router.unwrap_or_else(|| cx.id.clone()),
        method,
        path,
        func: func.unwrap_or_else(|| cx.id.clone()),
    })
}

/// Checks an endpoint path and rewrites `:name` segments to `{name}`.
fn route_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with `/`"));
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let (name, rewritten) = if let Some(n) = seg.strip_prefix(':') {
            (Some(n), format!("{{{n}}}"))
        } else if seg.contains('{') || seg.contains('}') {
            let inner = seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .ok_or_else(|| format!("path segment {seg:?} must be a whole `{{name}}`"))?;
            match inner.strip_suffix("...") {
                Some(n) if !last => {
                    return Err(format!("wildcard `{{{n}...}}` must be the last segment"));
                }
                Some(n) => (Some(n), seg.to_string()),
                None => (Some(inner), seg.to_string()),
            }
        } else {
            (None, seg.to_string())
        };
        if let Some(n) = name {
            let valid = !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!("invalid parameter name {n:?} in path"));
            }
            if !names.insert(n.to_string()) {
                return Err(format!("parameter `{n}` appears twice in path"));
            }
        }
        out.push(rewritten);
    }
    Ok(format!("/{}", out.join("/")))
}

fn directory(cx: &mut Cx) -> EntryKind {
    let dir = cx.required_string(&["directory"]).unwrap_or_default();
    let base = match cx.string(&["base"]).as_deref() {
        None | Some("project") => cx.root.to_path_buf(),
        Some("module") => cx.file.dir.clone(),
        Some(other) => {
            cx.error(
                &["base"],
                format!("invalid base {other:?} (expected `project` or `module`)"),
            );
            cx.root.to_path_buf()
        }
    };
    let mode = match cx.get(&["mode"]) {
        None => 0o755,
        Some(v) => {
            let digits = match v {
                Value::String(s) => Some(s.trim().trim_start_matches("0o").to_string()),
                Value::Number(n) if n.is_u64() => Some(n.to_string()),
                _ => None,
            };
            match digits
                .and_then(|d| u32::from_str_radix(&d, 8).ok())
                .filter(|m| *m <= 0o7777)
            {
                Some(m) => m,
                None => {
                    cx.error(
                        &["mode"],
                        format!("invalid mode {v} (expected octal like \"0755\")"),
                    );
                    0o755
                }
            }
        }
    };
    EntryKind::Directory(Directory {
        directory: raw::normalize(&base.join(&dir)),
        auto_init: cx.boolean(&["auto_init"], false),
        mode,
    })
}

fn static_mount(cx: &mut Cx) -> EntryKind {
    let server = cx.reference(&["meta", "server"], Expect::Kinds(&["http.service"]));
    let path = cx
        .required_string(&["path"])
        .unwrap_or_default()
        .trim()
        .to_string();
    if !path.is_empty() && !path.starts_with('/') {
        cx.error(&["path"], format!("path {path:?} must start with `/`"));
    }
    let fs = cx.reference(&["fs"], Expect::Kinds(&["fs.directory"]));
    cx.mapping(&["static_options"]);
    let spa = cx.boolean(&["static_options", "spa"], false);
    let index = cx
        .string(&["static_options", "index"])
        .unwrap_or_else(|| "index.html".into());
    if spa && index.trim().is_empty() {
        cx.error(
            &["static_options", "index"],
            "an index file is required when `spa` is true",
        );
    }
    let middleware = cx.strings(&["middleware"]);
    cx.check_middleware(&["middleware"], &middleware, false);
    let mut options = cx.options(&["options"]);
    cx.option_reference(
        &mut options,
        "options",
        "token_auth.store",
        Expect::Kinds(&["security.token_store"]),
    );
    EntryKind::Static(StaticMount {
        server: server.unwrap_or_else(|| cx.id.clone()),
        path,
        fs: fs.unwrap_or_else(|| cx.id.clone()),
        spa,
        index,
        cache: cx.string(&["static_options", "cache"]),
        middleware,
        options,
    })
}

// ---- whole-registry checks ----

/// Cross-entry view: which ids exist (with their declared kind, even when the entry itself
/// failed to decode, so one broken entry does not make every reference to it dangle).
struct Linker<'a> {
    raws: &'a [&'a RawEntry],
    files: &'a [YamlFile],
    decoded: &'a [Decoded],
    kind_of: HashMap<&'a EntryId, &'a str>,
    /// Index in `decoded` by id.
    position: HashMap<&'a EntryId, usize>,
    /// Group id → raw indices of the policies listing it.
    groups: HashMap<EntryId, Vec<&'a EntryId>>,
}

impl<'a> Linker<'a> {
    fn new(raws: &'a [&'a RawEntry], files: &'a [YamlFile], decoded: &'a [Decoded]) -> Self {
        let kind_of = raws.iter().map(|r| (&r.id, r.kind.as_str())).collect();
        let position = decoded
            .iter()
            .enumerate()
            .map(|(i, d)| (&d.entry.id, i))
            .collect();
        let mut groups: HashMap<EntryId, Vec<&EntryId>> = HashMap::new();
        for r in raws.iter().filter(|r| r.kind == "security.policy") {
            let Some(Value::Array(names)) = r.data.get("groups") else {
                continue;
            };
            for name in names.iter().filter_map(Value::as_str) {
                if let Some(g) = EntryId::resolve(name, &r.id.namespace) {
                    groups.entry(g).or_default().push(&r.id);
                }
            }
        }
        Linker {
            raws,
            files,
            decoded,
            kind_of,
            position,
            groups,
        }
    }

    fn raw_of(&self, d: &Decoded) -> &'a RawEntry {
        self.raws[d.raw]
    }

    fn diag(&self, d: &Decoded, path: &[Seg], message: String) -> Diagnostic {
        let raw = self.raw_of(d);
        let file = &self.files[raw.file];
        let mut diag = Diagnostic::new(&file.display, message)
            .at_line(file.line_of(raw.span, path).or(raw.line))
            .in_entry(raw.id.to_string());
        if !path.is_empty() {
            diag = diag.in_field(display_path(path));
        }
        diag
    }

    fn check_references(&self, diags: &mut Vec<Diagnostic>) {
        for d in self.decoded {
            for r in &d.refs {
                let problem = match r.expect {
                    Expect::Group => (!self.groups.contains_key(&r.target)).then(|| {
                        format!(
                            "unknown security group `{}` (no policy lists it in `groups`)",
                            r.target
                        )
                    }),
                    Expect::Any => (!self.kind_of.contains_key(&r.target))
                        .then(|| format!("unknown entry `{}`", r.target)),
                    Expect::Kinds(kinds) => match self.kind_of.get(&r.target) {
                        None => Some(format!("unknown entry `{}`", r.target)),
                        // An unknown kind was reported on its own entry already.
                        Some(kind) if !KNOWN_KINDS.contains(kind) => None,
                        Some(kind) if !kinds.contains(kind) => Some(format!(
                            "`{}` is a {kind}, expected {}",
                            r.target,
                            kinds.join(" or ")
                        )),
                        Some(_) => None,
                    },
                };
                if let Some(message) = problem {
                    diags.push(self.diag(d, &r.path, message));
                }
            }
        }
    }

    /// One prefix per router per server; one handler per method and full path; one static
    /// mount per path.
    fn check_http(&self, diags: &mut Vec<Diagnostic>) {
        let mut prefixes: HashMap<(&EntryId, &str), &EntryId> = HashMap::new();
        let mut mounts: HashMap<(&EntryId, &str), &EntryId> = HashMap::new();
        for d in self.decoded.iter().filter(|d| d.ok) {
            match &d.entry.kind {
                EntryKind::Router(r) => {
                    if let Some(first) =
                        prefixes.insert((&r.server, r.prefix.as_str()), &d.entry.id)
                    {
                        prefixes.insert((&r.server, r.prefix.as_str()), first);
                        diags.push(self.diag(
                            d,
                            &keys(&["prefix"]),
                            format!(
                                "prefix {:?} is already used by {first} on server {}",
                                r.prefix, r.server
                            ),
                        ));
                    }
                }
                EntryKind::Static(s) => {
                    if let Some(first) = mounts.insert((&s.server, s.path.as_str()), &d.entry.id) {
                        mounts.insert((&s.server, s.path.as_str()), first);
                        diags.push(self.diag(
                            d,
                            &keys(&["path"]),
                            format!(
                                "path {:?} is already mounted by {first} on server {}",
                                s.path, s.server
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        let mut routes: HashMap<(EntryId, String, String), &EntryId> = HashMap::new();
        for d in self.decoded.iter().filter(|d| d.ok) {
            let EntryKind::Endpoint(e) = &d.entry.kind else {
                continue;
            };
            let Some(router) = self.position.get(&e.router).map(|&i| &self.decoded[i]) else {
                continue;
            };
            let EntryKind::Router(r) = &router.entry.kind else {
                continue;
            };
            if !router.ok {
                continue;
            }
            let full = format!("{}{}", r.prefix, e.path);
            let key = (r.server.clone(), e.method.clone(), full.clone());
            if let Some(first) = routes.get(&key) {
                diags.push(self.diag(
                    d,
                    &keys(&["path"]),
                    format!("route {} {full} is already handled by {first}", e.method),
                ));
            } else {
                routes.insert(key, &d.entry.id);
            }
        }
    }

    /// `edges()[i]`: indices (in `decoded`) of what `decoded[i]` depends on.
    fn edges(&self) -> Vec<Vec<usize>> {
        self.decoded
            .iter()
            .map(|d| {
                let mut out = BTreeSet::new();
                for r in &d.refs {
                    match r.expect {
                        Expect::Group => {
                            for policy in self.groups.get(&r.target).into_iter().flatten() {
                                out.extend(self.position.get(policy).copied());
                            }
                        }
                        _ => out.extend(self.position.get(&r.target).copied()),
                    }
                }
                out.into_iter().collect()
            })
            .collect()
    }

    fn check_cycles(&self, deps: &[Vec<usize>], diags: &mut Vec<Diagnostic>) {
        let ids: Vec<&EntryId> = self.decoded.iter().map(|d| &d.entry.id).collect();
        for cycle in order::find_cycles(&ids, deps) {
            let shown: Vec<String> = cycle.iter().map(|&i| ids[i].to_string()).collect();
            let first = &self.decoded[cycle[0]];
            diags.push(self.diag(
                first,
                &[],
                format!("dependency cycle: {}", shown.join(" -> ")),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryDiff;

    fn lua_check(name: &str, src: &str) -> Result<(), String> {
        mlua::Lua::new()
            .load(src)
            .set_name(name)
            .into_function()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A project root holding `files` (paths relative to it).
    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn load_env(root: &Path, env: &[(&str, &str)]) -> Result<Registry, Vec<Diagnostic>> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_with_env(&root.join("registry"), root, &lua_check, &|n| {
            env.get(n).cloned()
        })
    }

    fn load_ok(root: &Path) -> Registry {
        match load_env(root, &[]) {
            Ok(r) => r,
            Err(d) => panic!("{}", lines(root, &d).join("\n")),
        }
    }

    /// Diagnostics as displayed, with the temp root stripped so they read like the CLI's.
    fn lines(root: &Path, diags: &[Diagnostic]) -> Vec<String> {
        let prefix = format!("{}/", root.display());
        diags
            .iter()
            .map(|d| d.to_string().replace(&prefix, ""))
            .collect()
    }

    fn errors_env(yaml: &str, env: &[(&str, &str)]) -> Vec<String> {
        let root = project(&[("registry/_index.yaml", yaml)]);
        match load_env(root.path(), env) {
            Ok(_) => panic!("expected errors"),
            Err(d) => lines(root.path(), &d),
        }
    }

    fn errors(yaml: &str) -> Vec<String> {
        errors_env(yaml, &[])
    }

    fn single(yaml_entries: &str) -> Registry {
        let yaml = format!("namespace: app\nentries:\n{yaml_entries}");
        let root = project(&[("registry/_index.yaml", &yaml)]);
        load_ok(root.path())
    }

    fn id(s: &str) -> EntryId {
        EntryId::resolve(s, "app").unwrap()
    }

    /// The app's registry (the tutorial's entries) with its scripts, in a fresh project root.
    fn tutorial() -> tempfile::TempDir {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = tempfile::tempdir().unwrap();
        for dir in ["registry", "scripts"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
            for item in std::fs::read_dir(repo.join(dir)).unwrap() {
                let item = item.unwrap();
                std::fs::copy(item.path(), root.path().join(dir).join(item.file_name())).unwrap();
            }
        }
        root
    }

    #[test]
    fn tutorial_registry_loads_with_spec_defaults() {
        let root = tutorial();
        let reg = load_ok(root.path());
        assert_eq!(reg.entries().len(), 37);
        assert!(reg.warnings().is_empty(), "{:?}", reg.warnings());
        let kind = |name: &str| &reg.get(&id(name)).unwrap().kind;

        let EntryKind::TokenStore(t) = kind("tokens") else {
            panic!()
        };
        assert_eq!(t.store, id("token_data"));
        assert_eq!(
            (t.token_length, t.default_expiration),
            (32, Duration::from_secs(3600))
        );
        assert!(t.demo_key);
        let EntryKind::MemoryStore(m) = kind("token_data") else {
            panic!()
        };
        assert_eq!(
            (m.max_size, m.cleanup_interval),
            (10_000, Duration::from_secs(300))
        );
        assert!(m.lifecycle.auto_start);
        assert_eq!(m.lifecycle.start_timeout, Duration::from_secs(10));
        let EntryKind::ProcessHost(h) = kind("processes") else {
            panic!()
        };
        assert_eq!(h.workers, cpu_count());
        assert_eq!((h.queue_size, h.local_queue_size), (1024, 256));
        let EntryKind::HttpService(s) = kind("gateway") else {
            panic!()
        };
        assert_eq!(
            (s.addr.as_str(), s.buffer_size, s.read_timeout),
            (":8081", 1024, None)
        );
        let EntryKind::Router(r) = kind("ws_router") else {
            panic!()
        };
        assert_eq!(
            (r.server.clone(), r.prefix.as_str()),
            (id("gateway"), "/ws")
        );
        assert_eq!(r.middleware, ["cors", "token_auth", "metrics"]);
        assert_eq!(r.options["token_auth.store"], "app:tokens");
        assert_eq!(r.options["cors.allow.origins"], "*");
        assert_eq!(r.post_middleware, ["websocket_relay"]);
        let EntryKind::Static(st) = kind("static") else {
            panic!()
        };
        assert_eq!(
            (st.path.as_str(), st.spa, st.index.as_str()),
            ("/", true, "index.html")
        );
        let EntryKind::Directory(d) = kind("public_fs") else {
            panic!()
        };
        assert_eq!(
            d.directory,
            std::fs::canonicalize(root.path()).unwrap().join("public")
        );
        assert_eq!(d.mode, 0o755);
        let EntryKind::LuaProcess(code) = kind("ticker") else {
            panic!()
        };
        assert_eq!(code.chunk_name, "scripts/ticker.lua");
        assert_eq!(code.method, "main");
        assert!(code
            .source
            .contains("process.registry.register(\"ticker\")"));
        let EntryKind::Endpoint(e) = kind("ws_ticker.endpoint") else {
            panic!()
        };
        assert_eq!(
            (e.method.as_str(), e.path.as_str(), e.func.clone()),
            ("GET", "/ticker", id("ws_ticker"))
        );
        let EntryKind::Policy(p) = kind("user_policy") else {
            panic!()
        };
        assert!(p.allow);
        assert_eq!(p.groups, [id("user")]);

        let watched = reg.watched_files();
        assert_eq!(watched.len(), 14, "{watched:?}");
        assert!(watched.iter().any(|p| p.ends_with("registry/_index.yaml")));
        assert!(watched
            .iter()
            .any(|p| p.ends_with("scripts/ws_handler.lua")));
    }

    #[test]
    fn tutorial_start_order_follows_edges_then_classes() {
        let root = tutorial();
        let reg = load_ok(root.path());
        let order: Vec<String> = reg.start_order().iter().map(|i| i.to_string()).collect();
        let pos = |s: &str| order.iter().position(|o| o == s).unwrap();
        assert_eq!(order.len(), 37);
        assert!(pos("app:token_data") < pos("app:tokens"));
        for resource in [
            "app:db",
            "app:token_data",
            "app:tokens",
            "app:user_policy",
            "app:public_fs",
        ] {
            assert!(pos(resource) < pos("app:processes"), "{resource}");
        }
        assert!(pos("app:processes") < pos("app:migrate-service"));
        assert!(pos("app:migrate-service") < pos("app:gateway"));
        assert!(pos("app:gateway") < pos("app:ws_router"));
        assert!(pos("app:tokens") < pos("app:ws_router"));
        assert!(pos("app:ws_router") < pos("app:ws_ticker.endpoint"));
        let mut deps = reg.dependencies(&id("ws_router"));
        deps.sort();
        assert_eq!(deps, [id("gateway"), id("tokens")]);
        let mut deps = reg.dependencies(&id("migrate-service"));
        deps.sort();
        assert_eq!(deps, [id("migrate"), id("processes")]);
        assert_eq!(reg.dependents(&id("token_data")), [id("tokens")]);
    }

    #[test]
    fn requires_pulls_a_later_class_forward() {
        let reg = single(
            "  - name: db\n    kind: db.sql.sqlite\n    file: x.db\n    lifecycle:\n      requires: [svc]\n\
             \x20 - name: code\n    kind: process.lua\n    source: 'return {}'\n    method: main\n\
             \x20 - name: host\n    kind: process.host\n\
             \x20 - name: svc\n    kind: process.service\n    process: code\n    host: host\n\
             \x20 - name: web\n    kind: http.service\n    addr: ':0'\n\
             \x20 - name: mem\n    kind: store.memory\n",
        );
        let order: Vec<String> = reg.start_order().iter().map(|i| i.name.clone()).collect();
        assert_eq!(order, ["mem", "code", "host", "svc", "db", "web"]);
    }

    #[test]
    fn dependency_cycle_is_one_diagnostic() {
        let got = errors(
            "namespace: app\nentries:\n\
             \x20 - name: a\n    kind: store.memory\n    lifecycle:\n      requires: [b]\n\
             \x20 - name: b\n    kind: store.memory\n    lifecycle:\n      depends_on: [c]\n\
             \x20 - name: c\n    kind: store.memory\n    lifecycle:\n      requires: [app:a]\n\
             \x20 - name: d\n    kind: store.memory\n    lifecycle:\n      requires: [d]\n",
        );
        assert_eq!(
            got,
            [
                "registry/_index.yaml:3: entry app:a: dependency cycle: app:a -> app:b -> app:c -> app:a",
                "registry/_index.yaml:15: entry app:d: dependency cycle: app:d -> app:d",
            ]
        );
    }

    #[test]
    fn missing_and_mistyped_fields() {
        let got = errors(
            "namespace: app\nentries:\n\
             \x20 - name: db\n    kind: db.sql.sqlite\n\
             \x20 - name: mem\n    kind: store.memory\n    max_size: lots\n    lifecycle:\n      auto_start: yes please\n\
             \x20 - name: host\n    kind: process.host\n    host:\n      workers: -2\n\
             \x20 - name: code\n    kind: process.lua\n    source: 'return {}'\n    modules: logger\n",
        );
        assert_eq!(
            got,
            [
                "registry/_index.yaml:3: entry app:db: field `file`: missing required field",
                "registry/_index.yaml:7: entry app:mem: field `max_size`: expected a non-negative integer, found a string",
                "registry/_index.yaml:9: entry app:mem: field `lifecycle.auto_start`: expected true or false, found a string",
                "registry/_index.yaml:13: entry app:host: field `host.workers`: expected a non-negative integer, found -2",
                "registry/_index.yaml:14: entry app:code: field `method`: missing required field",
                "registry/_index.yaml:17: entry app:code: field `modules`: expected a list, found a string",
            ]
        );
    }

    #[test]
    fn unknown_kind_and_duplicate_id() {
        let root = project(&[
            ("registry/_index.yaml", "namespace: app\nentries:\n  - name: x\n    kind: registry.entry\n  - name: mem\n    kind: store.memory\n"),
            ("registry/more/other.yml", "namespace: app\nentries:\n  - name: mem\n    kind: store.memory\n"),
        ]);
        let got = lines(root.path(), &load_env(root.path(), &[]).unwrap_err());
        let known = KNOWN_KINDS.join(", ");
        assert_eq!(
            got,
            [
                format!("registry/_index.yaml:4: entry app:x: field `kind`: unknown kind `registry.entry` (known: {known})"),
                "registry/more/other.yml:3: entry app:mem: duplicate entry id (first defined at registry/_index.yaml:5)".to_string(),
            ]
        );
    }

    #[test]
    fn bad_durations() {
        let got = errors(
            "namespace: app\nentries:\n  - name: mem\n    kind: store.memory\n    cleanup_interval: 5 minutes\n    lifecycle:\n      restart:\n        max_delay: 90\n",
        );
        assert_eq!(
            got,
            [
                "registry/_index.yaml:5: entry app:mem: field `cleanup_interval`: invalid duration \"5 minutes\" (expected Go syntax like \"500ms\" or \"1h30m\")",
                "registry/_index.yaml:8: entry app:mem: field `lifecycle.restart.max_delay`: expected a duration string like \"5s\", found a number",
            ]
        );
    }

    #[test]
    fn memory_caps() {
        let entry = |name: &str, cap: &str| {
            format!("  - name: {name}\n    kind: process.lua\n    source: 'return {{main = function() end}}'\n    method: main\n    max_memory: {cap}\n")
        };
        let got = errors(&format!(
            "namespace: app\nentries:\n{}{}{}",
            entry("a", "lots"),
            entry("b", "0"),
            entry("c", "[1]")
        ));
        assert_eq!(
            got,
            [
                "registry/_index.yaml:7: entry app:a: field `max_memory`: invalid size \"lots\" (expected bytes or a number with KB, MB or GB)",
                "registry/_index.yaml:12: entry app:b: field `max_memory`: must be greater than zero",
                "registry/_index.yaml:17: entry app:c: field `max_memory`: expected a size like \"64MB\", found a list",
            ]
        );
        let reg = single(&format!("{}{}", entry("d", "64MB"), entry("e", "4096")));
        let cap = |n: &str| match &reg.get(&id(n)).unwrap().kind {
            EntryKind::LuaProcess(c) => c.max_memory,
            other => panic!("{other:?}"),
        };
        assert_eq!((cap("d"), cap("e")), (Some(64 << 20), Some(4096)));
    }

    #[test]
    fn dangling_and_wrong_kind_references() {
        let got = errors(
            "namespace: app\nentries:\n\
             \x20 - name: mem\n    kind: store.memory\n\
             \x20 - name: tokens\n    kind: security.token_store\n    store: nothing\n\
             \x20 - name: svc\n    kind: process.service\n    process: mem\n    host: other.ns:host\n    lifecycle:\n      requires: [ghost]\n      security:\n        policies: [mem]\n        groups: [admins]\n",
        );
        assert_eq!(
            got,
            [
                "registry/_index.yaml:7: entry app:tokens: field `store`: unknown entry `app:nothing`",
                "registry/_index.yaml:10: entry app:svc: field `process`: `app:mem` is a store.memory, expected process.lua",
                "registry/_index.yaml:11: entry app:svc: field `host`: unknown entry `other.ns:host`",
                "registry/_index.yaml:13: entry app:svc: field `lifecycle.requires[0]`: unknown entry `app:ghost`",
                "registry/_index.yaml:15: entry app:svc: field `lifecycle.security.policies[0]`: `app:mem` is a store.memory, expected security.policy",
                "registry/_index.yaml:16: entry app:svc: field `lifecycle.security.groups[0]`: unknown security group `app:admins` (no policy lists it in `groups`)",
            ]
        );
    }

    #[test]
    fn reference_to_a_broken_entry_is_not_also_dangling() {
        let got = errors(
            "namespace: app\nentries:\n  - name: mem\n    kind: store.memory\n    max_size: x\n  - name: tokens\n    kind: security.token_store\n    store: mem\n",
        );
        assert_eq!(got.len(), 1, "{got:?}");
    }

    #[test]
    fn policy_problems() {
        let got = errors(
            "namespace: app\nentries:\n\
             \x20 - name: p\n    kind: security.policy\n    policy:\n      actions: []\n      effect: maybe\n      conditions:\n\
             \x20       - field: actor.id\n          operator: like\n          value: x\n\
             \x20       - field: ''\n          operator: eq\n          value: x\n\
             \x20       - field: actor.meta.role\n          operator: eq\n\
             \x20       - field: actor.id\n          operator: matches\n          value: '(unclosed'\n",
        );
        assert_eq!(
            got,
            [
                "registry/_index.yaml:5: entry app:p: field `policy.resources`: missing required field",
                "registry/_index.yaml:6: entry app:p: field `policy.actions`: must not be an empty list",
                "registry/_index.yaml:7: entry app:p: field `policy.effect`: invalid effect \"maybe\" (expected `allow` or `deny`)",
                &format!("registry/_index.yaml:10: entry app:p: field `policy.conditions[0].operator`: unknown operator \"like\" (known: {CONDITION_OPERATORS})"),
                "registry/_index.yaml:12: entry app:p: field `policy.conditions[1].field`: missing or empty condition field",
                "registry/_index.yaml:15: entry app:p: field `policy.conditions[2]`: condition needs `value` or `value_from`",
                "registry/_index.yaml:19: entry app:p: field `policy.conditions[3].value`: invalid regex \"(unclosed\": error: unclosed group",
            ]
        );
    }

    #[test]
    fn policy_conditions_and_groups_decode() {
        let reg = single(
            "  - name: p\n    kind: security.policy\n    policy:\n      actions: [read, write]\n      resources: 'app:*'\n      effect: deny\n      conditions:\n\
             \x20       - {field: actor.meta.role, operator: ne, value: admin}\n\
             \x20       - {field: meta.owner, operator: eq, value_from: actor.id}\n\
             \x20       - {field: actor.meta.x, operator: exists}\n    groups: [user, other:admin]\n",
        );
        let EntryKind::Policy(p) = &reg.get(&id("p")).unwrap().kind else {
            panic!()
        };
        assert!(!p.allow);
        assert_eq!(p.actions, ["read", "write"]);
        assert_eq!(p.resources, ["app:*"]);
        assert_eq!(p.conditions.len(), 3);
        assert_eq!(p.conditions[0].operator, ConditionOp::Ne);
        assert_eq!(
            p.conditions[1].value,
            ConditionValue::From("actor.id".into())
        );
        assert_eq!(p.groups, [id("user"), id("other:admin")]);
    }

    #[test]
    fn http_problems() {
        let got = errors(
            "namespace: app\nentries:\n\
             \x20 - name: web\n    kind: http.service\n    addr: '8081'\n\
             \x20 - name: web2\n    kind: http.service\n    addr: ':0'\n    tls:\n      mode: auto\n\
             \x20 - name: r0\n    kind: http.router\n    meta: {server: web2}\n    prefix: /api/\n\
             \x20 - name: r1\n    kind: http.router\n    meta:\n      server: web2\n    prefix: /v1\n    middleware: [cors, gzip, websocket_relay]\n    post_middleware: [token_auth]\n\
             \x20 - name: r2\n    kind: http.router\n    meta: {server: web2}\n    prefix: /api\n\
             \x20 - name: f\n    kind: function.lua\n    source: 'return {}'\n    method: handler\n\
             \x20 - name: e1\n    kind: http.endpoint\n    meta:\n      router: r2\n    method: fetch\n    path: users\n    func: f\n\
             \x20 - name: e2\n    kind: http.endpoint\n    meta:\n      router: r2\n    method: get\n    path: /a/{rest...}/b\n    func: r2\n",
        );
        assert_eq!(
            got,
            [
                "registry/_index.yaml:5: entry app:web: field `addr`: invalid address \"8081\" (expected `host:port` or `:port`)",
                "registry/_index.yaml:10: entry app:web2: field `tls.mode`: TLS is not supported; terminate TLS in front of moonwire",
                "registry/_index.yaml:20: entry app:r1: field `middleware[1]`: unknown middleware `gzip` (known: api_auth, cors, metrics, token_auth, websocket_relay)",
                "registry/_index.yaml:20: entry app:r1: field `middleware[2]`: `websocket_relay` is not a pre-match middleware; list it under `post_middleware`",
                "registry/_index.yaml:21: entry app:r1: field `post_middleware[0]`: `token_auth` is not a post-match middleware; list it under `middleware`",
                "registry/_index.yaml:25: entry app:r2: field `prefix`: prefix \"/api\" is already used by app:r0 on server app:web2",
                "registry/_index.yaml:34: entry app:e1: field `method`: invalid method \"FETCH\" (expected one of GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS, TRACE)",
                "registry/_index.yaml:35: entry app:e1: field `path`: path \"users\" must start with `/`",
                "registry/_index.yaml:42: entry app:e2: field `path`: wildcard `{rest...}` must be the last segment",
                "registry/_index.yaml:43: entry app:e2: field `func`: `app:r2` is a http.router, expected function.lua",
            ]
        );
    }

    #[test]
    fn endpoint_paths_are_normalised_and_routes_unique() {
        let base = "  - name: web\n    kind: http.service\n    addr: ':0'\n\
                    \x20 - name: r\n    kind: http.router\n    meta: {server: web}\n    prefix: /api\n\
                    \x20 - name: f\n    kind: function.lua\n    source: 'return {}'\n    method: handler\n\
                    \x20 - name: e\n    kind: http.endpoint\n    meta: {router: r}\n    method: delete\n    path: /alerts/:id/{rest...}\n    func: f\n";
        let reg = single(base);
        let EntryKind::Endpoint(e) = &reg.get(&id("e")).unwrap().kind else {
            panic!()
        };
        assert_eq!(
            (e.method.as_str(), e.path.as_str()),
            ("DELETE", "/alerts/{id}/{rest...}")
        );
        let dup = format!(
            "namespace: app\nentries:\n{base}  - name: e2\n    kind: http.endpoint\n    meta: {{router: r}}\n    method: DELETE\n    path: /alerts/{{id}}/{{rest...}}\n    func: f\n"
        );
        assert_eq!(
            errors(&dup),
            ["registry/_index.yaml:24: entry app:e2: field `path`: route DELETE /api/alerts/{id}/{rest...} is already handled by app:e"]
        );
        assert!(route_path("/a/{x}/{x}").is_err());
        assert!(route_path("/a/b{x}").is_err());
        assert_eq!(route_path("/").unwrap(), "/");
    }

    #[test]
    fn env_placeholders() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = env(&[("HOST", "h"), ("EMPTY", "")]);
        assert_eq!(
            raw::interpolate("http://${env:HOST}:1", &e).unwrap(),
            "http://h:1"
        );
        assert_eq!(raw::interpolate("${env:NOPE|dflt}", &e).unwrap(), "dflt");
        assert_eq!(raw::interpolate("${env:EMPTY|dflt}", &e).unwrap(), "dflt");
        assert_eq!(raw::interpolate("${env:EMPTY}", &e).unwrap(), "");
        assert_eq!(
            raw::interpolate("$${env:HOST} ${other} $x", &e).unwrap(),
            "${env:HOST} ${other} $x"
        );
        assert_eq!(
            raw::interpolate("${env:NOPE}", &e).unwrap_err(),
            "environment variable `NOPE` is not set"
        );
        assert!(raw::interpolate("${env:HOST", &e).is_err());

        let yaml = "namespace: app\nentries:\n  - name: mem\n    kind: store.memory\n  - name: t\n    kind: security.token_store\n    store: mem\n    token_key: \"${env:MW_KEY}\"\n";
        let root = project(&[("registry/_index.yaml", yaml)]);
        let reg = load_env(root.path(), &[("MW_KEY", "s3cret")]).unwrap();
        let EntryKind::TokenStore(t) = &reg.get(&id("t")).unwrap().kind else {
            panic!()
        };
        assert_eq!(t.token_key, "s3cret");
        assert!(!t.demo_key);
        assert_eq!(
            errors(yaml),
            ["registry/_index.yaml:8: entry app:t: field `token_key`: environment variable `MW_KEY` is not set"]
        );
    }

    #[test]
    fn token_key_env_warns_when_unset() {
        let yaml = "namespace: app\nentries:\n  - name: mem\n    kind: store.memory\n  - name: t\n    kind: security.token_store\n    store: mem\n    token_key: fallback\n    token_key_env: MW_TOKEN_KEY\n";
        let root = project(&[("registry/_index.yaml", yaml)]);
        let reg = load_env(root.path(), &[]).unwrap();
        let EntryKind::TokenStore(t) = &reg.get(&id("t")).unwrap().kind else {
            panic!()
        };
        assert_eq!(t.token_key, "fallback");
        assert_eq!(
            lines(root.path(), reg.warnings()),
            ["registry/_index.yaml:9: entry app:t: field `token_key_env`: environment variable `MW_TOKEN_KEY` is not set; keeping `token_key`"]
        );
        let reg = load_env(root.path(), &[("MW_TOKEN_KEY", "from-env")]).unwrap();
        let EntryKind::TokenStore(t) = &reg.get(&id("t")).unwrap().kind else {
            panic!()
        };
        assert_eq!(t.token_key, "from-env");
        assert!(reg.warnings().is_empty());
    }

    #[test]
    fn file_references_resolve_and_stay_inside_the_root() {
        let yaml = "namespace: app\nentries:\n\
            \x20 - name: a\n    kind: process.lua\n    source: file://../scripts/a.lua\n    method: main\n\
            \x20 - name: b\n    kind: function.lua\n    source: file:///scripts/b.lua\n    method: handler\n\
            \x20 - name: c\n    kind: process.lua\n    source: file://local.lua\n    method: main\n";
        let root = project(&[
            ("registry/_index.yaml", yaml),
            ("registry/local.lua", "return {main = function() end}"),
            ("scripts/a.lua", "return {}"),
            ("scripts/b.lua", "return {}"),
        ]);
        let reg = load_ok(root.path());
        let chunk = |n: &str| match &reg.get(&id(n)).unwrap().kind {
            EntryKind::LuaProcess(c) | EntryKind::LuaFunction(c) => c.chunk_name.clone(),
            _ => panic!(),
        };
        assert_eq!(
            (chunk("a"), chunk("b"), chunk("c")),
            (
                "scripts/a.lua".into(),
                "scripts/b.lua".into(),
                "registry/local.lua".into()
            )
        );
        let canon = std::fs::canonicalize(root.path()).unwrap();
        assert_eq!(
            reg.get(&id("a")).unwrap().source_files,
            [canon.join("scripts/a.lua")]
        );
        assert_eq!(reg.entries_reading(&canon.join("scripts/b.lua")), [id("b")]);
        assert_eq!(reg.watched_files().len(), 4);

        let bad = "namespace: app\nentries:\n\
            \x20 - name: a\n    kind: process.lua\n    source: file://../../etc/passwd\n    method: main\n\
            \x20 - name: b\n    kind: process.lua\n    source: file://missing.lua\n    method: main\n\
            \x20 - name: c\n    kind: process.lua\n    source: file://link.lua\n    method: main\n";
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.lua"), "return {}").unwrap();
        let root = project(&[("registry/_index.yaml", bad)]);
        std::os::unix::fs::symlink(
            outside.path().join("x.lua"),
            root.path().join("registry/link.lua"),
        )
        .unwrap();
        assert_eq!(
            lines(root.path(), &load_env(root.path(), &[]).unwrap_err()),
            [
                "registry/_index.yaml:5: entry app:a: field `source`: `file://../../etc/passwd` resolves outside the project root",
                "registry/_index.yaml:9: entry app:b: field `source`: file not found: registry/missing.lua",
                "registry/_index.yaml:13: entry app:c: field `source`: `file://link.lua` resolves outside the project root",
            ]
        );
    }

    #[test]
    fn lua_syntax_errors_name_the_lua_file_and_line() {
        let yaml = "namespace: app\nentries:\n\
            \x20 - name: a\n    kind: process.lua\n    source: file://a.lua\n    method: main\n\
            \x20 - name: b\n    kind: function.lua\n    source: |\n      local x =\n      return {}\n    method: main\n";
        let root = project(&[
            ("registry/_index.yaml", yaml),
            (
                "registry/a.lua",
                "local function main()\n  if x then\nend\nreturn {main = main}\n",
            ),
        ]);
        assert_eq!(
            lines(root.path(), &load_env(root.path(), &[]).unwrap_err()),
            [
                "registry/_index.yaml:9: entry app:b: field `source`: syntax error at Lua line 2: unexpected symbol near 'return'",
                "registry/a.lua:5: entry app:a: syntax error: 'end' expected (to close 'function' at line 1) near <eof>",
            ]
        );
        assert_eq!(
            split_lua_error("syntax error: [string \"s/x.lua\"]:3: unexpected symbol near 'end'"),
            (Some(3), "unexpected symbol near 'end'".into())
        );
        assert_eq!(
            split_lua_error("s/x.lua:7: oops\nstack"),
            (Some(7), "oops".into())
        );
        assert_eq!(split_lua_error("weird"), (None, "weird".into()));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let got = errors(
            "namespace: app\nentries:\n  - name: a\n    kind: nope\n  - name: b\n    kind: db.sql.sqlite\n  - name: c\n    kind: store.memory\n    max_size: -1\n  - name: d\n    kind: security.token_store\n    store: zzz\n",
        );
        assert_eq!(got.len(), 4, "{got:?}");
    }

    #[test]
    fn malformed_yaml_is_a_diagnostic() {
        let got =
            errors("namespace: app\nentries:\n  - name: a\n    kind: store.memory\n   bad: [\n");
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("registry/_index.yaml:5: invalid YAML: "),
            "{got:?}"
        );
    }

    #[test]
    fn single_entry_files_meta_merge_and_skips() {
        let root = project(&[
            ("registry/one.yaml", "version: \"1.0\"\nnamespace: app.x\nname: mem\nkind: store.memory\nmax_size: 7\nmeta:\n  title: t\n"),
            ("registry/two.yaml", "namespace: app\nmeta:\n  team: a\n  tags: [x]\nentries:\n  - name: host\n    kind: process.host\n    meta:\n      team: b\n"),
            ("registry/notes.yaml", "title: not a registry file\n"),
            ("registry/readme.txt", "namespace: ignored\n"),
        ]);
        let reg = load_ok(root.path());
        assert_eq!(reg.entries().len(), 2);
        let mem = reg.get(&EntryId::new("app.x", "mem")).unwrap();
        let EntryKind::MemoryStore(m) = &mem.kind else {
            panic!()
        };
        assert_eq!(m.max_size, 7);
        assert_eq!(mem.meta["title"], "t");
        let host = reg.get(&id("host")).unwrap();
        assert_eq!(host.meta["team"], "b");
        assert_eq!(host.meta["tags"][0], "x");
        assert_eq!(host.origin.line, Some(6));
        assert_eq!(reg.watched_files().len(), 3);
    }

    #[test]
    fn lifecycle_fields_decode_with_defaults() {
        let reg = single(
            "  - name: mem\n    kind: store.memory\n    lifecycle:\n      auto_start: true\n      startup: optional\n      stop_timeout: 2s\n      restart:\n        max_attempts: 3\n        backoff_factor: 1.5\n      security:\n        actor:\n          id: svc\n          meta: {role: system}\n",
        );
        let EntryKind::MemoryStore(m) = &reg.get(&id("mem")).unwrap().kind else {
            panic!()
        };
        let l = &m.lifecycle;
        assert!(l.auto_start && l.startup_optional);
        assert_eq!(
            (l.start_timeout, l.stop_timeout, l.stable_threshold),
            (
                Duration::from_secs(10),
                Duration::from_secs(2),
                Duration::from_secs(5)
            )
        );
        assert_eq!((l.restart.max_attempts, l.restart.backoff_factor), (3, 1.5));
        assert_eq!(l.restart.initial_delay, Duration::from_secs(1));
        let sec = l.security.as_ref().unwrap();
        assert_eq!(sec.actor_id.as_deref(), Some("svc"));
        assert_eq!(sec.actor_meta["role"], "system");
    }

    #[test]
    fn unknown_fields_warn() {
        let root = project(&[(
            "registry/_index.yaml",
            "namespace: app\nentries:\n  - name: mem\n    kind: store.memory\n    max_sise: 3\n",
        )]);
        let reg = load_env(root.path(), &[]).unwrap();
        assert_eq!(
            lines(root.path(), reg.warnings()),
            ["registry/_index.yaml:5: entry app:mem: field `max_sise`: unknown field for store.memory (ignored)"]
        );
    }

    #[test]
    fn scheduler_queue_sizes_are_accepted_with_a_warning() {
        let root = project(&[(
            "registry/_index.yaml",
            "namespace: app\nentries:\n  - name: host\n    kind: process.host\n    host:\n      workers: 2\n      queue_size: 9\n",
        )]);
        let reg = load_env(root.path(), &[]).unwrap();
        assert_eq!(
            lines(root.path(), reg.warnings()),
            ["registry/_index.yaml:7: entry app:host: field `host.queue_size`: accepted for compatibility; moonwire's scheduler has no such queue, so it has no effect"]
        );
    }

    #[test]
    fn missing_registry_dir() {
        let root = tempfile::tempdir().unwrap();
        let got = lines(root.path(), &load_env(root.path(), &[]).unwrap_err());
        assert_eq!(got, ["registry: registry directory not found"]);
    }

    #[test]
    fn api_auth_options_are_checked() {
        let got = errors(
            "namespace: app\nentries:\n\
             \x20 - name: web\n    kind: http.service\n    addr: ':0'\n\
             \x20 - name: mem\n    kind: store.memory\n\
             \x20 - name: r1\n    kind: http.router\n    meta: {server: web}\n    middleware: [api_auth]\n\
             \x20 - name: r2\n    kind: http.router\n    meta: {server: web}\n    prefix: /v2\n    middleware: [api_auth]\n    options:\n      api_auth.db: mem\n      api_auth.policy.read: nope\n      api_auth.window: soon\n",
        );
        assert_eq!(
            got,
            [
                "registry/_index.yaml:8: entry app:r1: field `options`: `api_auth` needs option `api_auth.db` (a db.sql.sqlite entry)",
                "registry/_index.yaml:18: entry app:r2: field `options.api_auth.db`: `app:mem` is a store.memory, expected db.sql.sqlite",
                "registry/_index.yaml:19: entry app:r2: field `options.api_auth.policy.read`: unknown entry `app:nope`",
                "registry/_index.yaml:20: entry app:r2: field `options.api_auth.window`: invalid duration \"soon\"",
            ]
        );
    }

    #[test]
    fn diff_reports_added_removed_and_dependents_of_changes() {
        let base = "namespace: app\nentries:\n\
            \x20 - name: mem\n    kind: store.memory\n\
            \x20 - name: tokens\n    kind: security.token_store\n    store: mem\n\
            \x20 - name: web\n    kind: http.service\n    addr: ':0'\n\
            \x20 - name: r\n    kind: http.router\n    meta: {server: web}\n    middleware: [token_auth]\n    options: {token_auth.store: tokens}\n\
            \x20 - name: gone\n    kind: process.host\n\
            \x20 - name: pool\n    kind: process.host\n    host: {workers: 2}\n\
            \x20 - name: svc\n    kind: process.service\n    process: p\n    host: pool\n\
            \x20 - name: p\n    kind: process.lua\n    source: 'return {main = function() end}'\n    method: main\n";
        let root = project(&[("registry/_index.yaml", base)]);
        let old = load_ok(root.path());
        assert!(old.diff(&old).is_empty());
        let newer = base
            .replace(
                "  - name: mem\n    kind: store.memory\n",
                "  - name: mem\n    kind: store.memory\n    max_size: 5\n",
            )
            .replace(
                "  - name: gone\n    kind: process.host\n",
                "  - name: fresh\n    kind: process.host\n",
            )
            .replace("host: {workers: 2}", "host: {workers: 5, queue_size: 9}")
            .replace("addr: ':0'\n", "addr: ':0'\n    host: {worker_count: 3}\n");
        std::fs::write(root.path().join("registry/_index.yaml"), newer).unwrap();
        let new = load_ok(root.path());
        assert_eq!(
            old.diff(&new),
            RegistryDiff {
                added: vec![id("fresh")],
                removed: vec![id("gone")],
                changed: vec![id("mem"), id("r"), id("tokens")],
                // Pool sizes alone: the host's service and the server's router are untouched.
                resized: vec![id("pool"), id("web")],
            }
        );
        // Moving an entry to another line is not a change.
        let moved = "namespace: app\nentries:\n\n\n  - name: only\n    kind: store.memory\n";
        let root2 = project(&[(
            "registry/_index.yaml",
            "namespace: app\nentries:\n  - name: only\n    kind: store.memory\n",
        )]);
        let a = load_ok(root2.path());
        std::fs::write(root2.path().join("registry/_index.yaml"), moved).unwrap();
        assert!(a.diff(&load_ok(root2.path())).is_empty());
    }

    #[test]
    fn directory_paths_and_modes() {
        let reg = single(
            "  - name: a\n    kind: fs.directory\n    directory: ./public/../www\n    mode: \"0700\"\n    auto_init: true\n\
             \x20 - name: b\n    kind: fs.directory\n    directory: assets\n    base: module\n    mode: 750\n",
        );
        let EntryKind::Directory(a) = &reg.get(&id("a")).unwrap().kind else {
            panic!()
        };
        assert!(a.directory.ends_with("www") && a.directory.is_absolute());
        assert_eq!((a.mode, a.auto_init), (0o700, true));
        let EntryKind::Directory(b) = &reg.get(&id("b")).unwrap().kind else {
            panic!()
        };
        assert!(b.directory.ends_with("registry/assets"));
        assert_eq!(b.mode, 0o750);
    }

    #[test]
    fn unknown_modules_are_errors() {
        let errs = errors(
            "namespace: app\nentries:\n  - name: p\n    kind: process.lua\n    source: 'return {}'\n    method: main\n    modules: [json, sokets]\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("field `modules[1]`: unknown module `sokets`"),
            "{errs:?}"
        );
    }

    #[test]
    fn service_input_and_imports() {
        let reg = single(
            "  - name: lib\n    kind: function.lua\n    source: 'return {}'\n    method: f\n\
             \x20 - name: code\n    kind: process.lua\n    source: 'return {}'\n    method: main\n    imports: {util: lib}\n\
             \x20 - name: host\n    kind: process.host\n    host: {workers: 3}\n\
             \x20 - name: svc\n    kind: process.service\n    process: code\n    host: host\n    input: [1, two, {three: 3}]\n",
        );
        let EntryKind::Service(s) = &reg.get(&id("svc")).unwrap().kind else {
            panic!()
        };
        assert_eq!(s.input.len(), 3);
        let EntryKind::LuaProcess(c) = &reg.get(&id("code")).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.imports["util"], id("lib"));
        assert_eq!(c.chunk_name, "app:code");
        assert_eq!(reg.dependencies(&id("code")), [id("lib")]);
        let EntryKind::ProcessHost(h) = &reg.get(&id("host")).unwrap().kind else {
            panic!()
        };
        assert_eq!(h.workers, 3);
    }
}
