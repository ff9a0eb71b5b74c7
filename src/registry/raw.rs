//! Raw stage: finds the registry's YAML files, parses them, splits them into raw entries
//! (id, kind, meta, flat data) and remembers where each entry sits in the text so later
//! diagnostics can name a line.
//!
//! serde_yaml 0.9 gives no spans for parsed values, so lines come from a small indentation
//! scanner over the file text ([`YamlFile::line_of`]); it understands block style (what
//! registry files use) and falls back to the nearest enclosing line otherwise.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::diag::Diagnostic;
use super::kinds::EntryId;

/// One step of a field path inside an entry (`policy.conditions[0].operator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

pub(crate) fn keys(path: &[&str]) -> Vec<Seg> {
    path.iter().map(|k| Seg::Key((*k).to_string())).collect()
}

pub(crate) fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A parsed definition file.
#[derive(Debug)]
pub(crate) struct YamlFile {
    /// As found under the registry directory (`registry/_index.yaml`), for messages.
    pub display: PathBuf,
    /// Canonical directory of the file: base of `file://rel` paths.
    pub dir: PathBuf,
    lines: Vec<String>,
}

/// Where an entry's text is: the first line of its mapping, the column of its keys and the
/// line after its last line (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    start: usize,
    key_col: usize,
    end: usize,
    /// The start line holds the entry's first key (`- name: x`), rather than its parent.
    keys_on_start: bool,
}

impl Span {
    fn is_root(&self) -> bool {
        self.keys_on_start && self.start == 0 && self.key_col == 0
    }
}

#[derive(Debug)]
pub(crate) struct RawEntry {
    pub file: usize,
    pub id: EntryId,
    pub kind: String,
    /// File-level `meta` merged under the entry's own.
    pub meta: Map<String, Value>,
    pub data: Map<String, Value>,
    pub span: Option<Span>,
    /// 1-based line of the entry.
    pub line: Option<usize>,
}

#[derive(Debug, Default)]
pub(crate) struct RawSet {
    pub files: Vec<YamlFile>,
    pub entries: Vec<RawEntry>,
    /// Canonical paths of every YAML file scanned, including skipped ones.
    pub scanned: Vec<PathBuf>,
}

/// Reads every `*.yaml`/`*.yml` under `dir` (sorted, recursive). Problems go to `diags`;
/// entries that cannot be identified (no name, no kind) are dropped after their diagnostic.
pub(crate) fn read(dir: &Path, diags: &mut Vec<Diagnostic>) -> RawSet {
    let mut set = RawSet::default();
    if !dir.is_dir() {
        diags.push(Diagnostic::new(dir, "registry directory not found"));
        return set;
    }
    let mut paths = Vec::new();
    collect_yaml(dir, &mut paths, diags);
    paths.sort();
    for path in paths {
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        set.scanned.push(canonical.clone());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::new(&path, format!("cannot read file: {e}")));
                continue;
            }
        };
        let file = YamlFile {
            display: path,
            dir: canonical
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            lines: text.lines().map(str::to_string).collect(),
        };
        let index = set.files.len();
        let entries = split_file(&file, index, &text, diags);
        set.files.push(file);
        set.entries.extend(entries);
    }
    set
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    let items = match std::fs::read_dir(dir) {
        Ok(items) => items,
        Err(e) => {
            diags.push(Diagnostic::new(dir, format!("cannot read directory: {e}")));
            return;
        }
    };
    for item in items.flatten() {
        let path = item.path();
        // `file_type` does not follow symlinks, so a symlinked directory cannot loop the walk.
        let Ok(file_type) = item.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            collect_yaml(&path, out, diags);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) && path.is_file()
        {
            out.push(path);
        }
    }
}

fn split_file(
    file: &YamlFile,
    index: usize,
    text: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<RawEntry> {
    let mut doc: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            diags.push(yaml_error(&file.display, &e));
            return Vec::new();
        }
    };
    if let Err(e) = doc.apply_merge() {
        diags.push(yaml_error(&file.display, &e));
        return Vec::new();
    }
    let serde_yaml::Value::Mapping(top) = doc else {
        return Vec::new();
    };
    let top: Map<String, Value> = match yaml_to_json(serde_yaml::Value::Mapping(top)) {
        Value::Object(m) => m,
        _ => return Vec::new(),
    };
    let Some(ns_value) = top.get("namespace") else {
        return Vec::new();
    };
    let root = file.root_span();
    let top_diag = |path: &[&str], msg: String| {
        Diagnostic::new(&file.display, msg)
            .at_line(file.line_of(root, &keys(path)))
            .in_field(path.join("."))
    };
    let namespace = match ns_value.as_str() {
        Some(ns) if valid_namespace(ns) => ns.to_string(),
        Some(ns) => {
            diags.push(top_diag(
                &["namespace"],
                format!("invalid namespace {ns:?} (dot-separated segments, no `:`)"),
            ));
            return Vec::new();
        }
        None => {
            diags.push(top_diag(
                &["namespace"],
                format!("expected a string, found {}", type_name(ns_value)),
            ));
            return Vec::new();
        }
    };
    let file_meta = match top.get("meta") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            diags.push(top_diag(
                &["meta"],
                format!("expected a mapping, found {}", type_name(other)),
            ));
            Map::new()
        }
    };

    let mut out = Vec::new();
    if let Some(entries) = top.get("entries") {
        let items = match entries {
            Value::Null => return out,
            Value::Array(items) => items,
            other => {
                diags.push(top_diag(
                    &["entries"],
                    format!("expected a list, found {}", type_name(other)),
                ));
                return out;
            }
        };
        let spans = file.entry_spans(items);
        for (i, item) in items.iter().enumerate() {
            let span = spans.get(i).copied().flatten();
            let line = span.map(|s| s.start + 1);
            let Value::Object(map) = item else {
                diags.push(
                    Diagnostic::new(&file.display, "entry must be a mapping")
                        .at_line(line)
                        .in_field(format!("entries[{i}]")),
                );
                continue;
            };
            if let Some(e) = raw_entry(file, index, &namespace, map, &file_meta, span, diags) {
                out.push(e);
            }
        }
    } else if top.contains_key("name") || top.contains_key("kind") {
        let map: Map<String, Value> = top
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "version" | "requirements" | "namespace"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The top-level `meta` is this entry's own meta here, so nothing to merge under it.
        if let Some(e) = raw_entry(file, index, &namespace, &map, &Map::new(), root, diags) {
            out.push(e);
        }
    }
    out
}

fn raw_entry(
    file: &YamlFile,
    index: usize,
    namespace: &str,
    map: &Map<String, Value>,
    file_meta: &Map<String, Value>,
    span: Option<Span>,
    diags: &mut Vec<Diagnostic>,
) -> Option<RawEntry> {
    let at = |field: &str| span.and_then(|s| file.line_of(Some(s), &keys(&[field])));
    let entry_line = match span {
        Some(s) if s.keys_on_start && !s.is_root() => Some(s.start + 1),
        _ => at("name"),
    };
    let mut problem = |field: &str, entry: Option<String>, msg: String| {
        let mut d = Diagnostic::new(&file.display, msg)
            .at_line(at(field).or(entry_line))
            .in_field(field);
        d.entry = entry;
        diags.push(d);
    };

    let name = match map.get("name") {
        Some(Value::String(n)) if valid_name(n) => n.clone(),
        Some(Value::String(n)) => {
            problem(
                "name",
                None,
                format!("invalid entry name {n:?} (non-empty, no `:` or spaces)"),
            );
            return None;
        }
        None | Some(Value::Null) => {
            problem("name", None, "missing required field".into());
            return None;
        }
        Some(other) => {
            problem(
                "name",
                None,
                format!("expected a string, found {}", type_name(other)),
            );
            return None;
        }
    };
    let id = EntryId::new(namespace, name);
    let kind = match map.get("kind") {
        Some(Value::String(k)) if !k.trim().is_empty() => k.trim().to_string(),
        None | Some(Value::Null) => {
            problem(
                "kind",
                Some(id.to_string()),
                "missing required field".into(),
            );
            return None;
        }
        Some(other) => {
            problem(
                "kind",
                Some(id.to_string()),
                format!("expected a string, found {}", type_name(other)),
            );
            return None;
        }
    };
    let mut meta = file_meta.clone();
    match map.get("meta") {
        None | Some(Value::Null) => {}
        Some(Value::Object(own)) => {
            for (k, v) in own {
                meta.insert(k.clone(), v.clone());
            }
        }
        Some(other) => {
            problem(
                "meta",
                Some(id.to_string()),
                format!("expected a mapping, found {}", type_name(other)),
            );
            return None;
        }
    }
    let data = match map.get("data") {
        Some(Value::Object(d)) => d.clone(),
        Some(Value::Null) => Map::new(),
        Some(other) => {
            problem(
                "data",
                Some(id.to_string()),
                format!("expected a mapping, found {}", type_name(other)),
            );
            return None;
        }
        None => map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "name" | "kind" | "meta"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    Some(RawEntry {
        file: index,
        id,
        kind,
        meta,
        data,
        span,
        line: entry_line,
    })
}

fn yaml_error(file: &Path, e: &serde_yaml::Error) -> Diagnostic {
    let mut message = e.to_string();
    // The line is already in the prefix; the column is still worth keeping.
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(pos) = message.find(&suffix) {
            message.replace_range(pos..pos + suffix.len(), "");
        }
        message = format!("invalid YAML: {message} (column {})", loc.column());
    } else {
        message = format!("invalid YAML: {message}");
    }
    Diagnostic::new(file, message).at_line(e.location().map(|l| l.line()))
}

fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.split('.').all(|seg| {
            !seg.is_empty() && !seg.contains(':') && !seg.chars().any(char::is_whitespace)
        })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(':') && !name.chars().any(char::is_whitespace)
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Registry data is handled as JSON from here on: entry `input` and `meta` are JSON-shaped
/// anyway, and it keeps one value type in the typed stage.
pub(crate) fn yaml_to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (yaml_key(k), yaml_to_json(v)))
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

fn yaml_key(k: serde_yaml::Value) -> String {
    match k {
        serde_yaml::Value::String(s) => s,
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Null => "null".into(),
        other => serde_yaml::to_string(&other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

// ---- placeholders and `file://` ----

/// A `file://` string replaced by the file's text.
#[derive(Debug, Clone)]
pub(crate) struct FileRef {
    pub path: Vec<Seg>,
    pub canonical: PathBuf,
    /// Relative to the project root, `/`-separated (`scripts/ticker.lua`).
    pub rel: String,
}

/// Resolves `${env:…}` in every string of `data`, then replaces `file://` strings by the
/// file's text (the text itself is not interpolated: Lua code may contain `${`).
/// Returns the problems (field path, message) and the files read.
pub(crate) fn resolve_data(
    data: &mut Map<String, Value>,
    yaml_dir: &Path,
    root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Vec<(Vec<Seg>, String)>, Vec<FileRef>) {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut path = Vec::new();
    for (k, v) in data.iter_mut() {
        path.push(Seg::Key(k.clone()));
        resolve_value(v, &mut path, yaml_dir, root, env, &mut problems, &mut files);
        path.pop();
    }
    (problems, files)
}

fn resolve_value(
    v: &mut Value,
    path: &mut Vec<Seg>,
    yaml_dir: &Path,
    root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<(Vec<Seg>, String)>,
    files: &mut Vec<FileRef>,
) {
    match v {
        Value::String(s) => {
            let text = match interpolate(s, env) {
                Ok(t) => t,
                Err(e) => {
                    problems.push((path.clone(), e));
                    return;
                }
            };
            if let Some(spec) = text.strip_prefix("file://") {
                match read_file_ref(spec, yaml_dir, root) {
                    Ok((canonical, rel, content)) => {
                        files.push(FileRef {
                            path: path.clone(),
                            canonical,
                            rel,
                        });
                        *s = content;
                    }
                    Err(e) => problems.push((path.clone(), e)),
                }
            } else {
                *s = text;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                resolve_value(item, path, yaml_dir, root, env, problems, files);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                path.push(Seg::Key(k.clone()));
                resolve_value(item, path, yaml_dir, root, env, problems, files);
                path.pop();
            }
        }
        _ => {}
    }
}

/// `${env:NAME}`, `${env:NAME|default}` (default when unset or empty), `$${` = literal `${`.
/// Other `${…}` text is left alone.
pub(crate) fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains("${") {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${env:") {
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated `${env:` placeholder".to_string())?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once('|') {
                Some((n, d)) => (n.trim(), Some(d)),
                None => (inner.trim(), None),
            };
            if name.is_empty() {
                return Err("empty variable name in `${env:}` placeholder".into());
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Lexical normalisation: drops `.`, applies `..` (never above the filesystem root).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn rel_display(path: &Path, root: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) => rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => path.display().to_string(),
    }
}

/// Reads the target of `file://{spec}`: `(canonical path, path relative to root, text)`.
fn read_file_ref(
    spec: &str,
    yaml_dir: &Path,
    root: &Path,
) -> Result<(PathBuf, String, String), String> {
    if spec.trim().is_empty() {
        return Err("empty `file://` path".into());
    }
    let joined = match spec.strip_prefix('/') {
        Some(from_root) => root.join(from_root.trim_start_matches('/')),
        None => yaml_dir.join(spec),
    };
    let lexical = normalize(&joined);
    let escape = || format!("`file://{spec}` resolves outside the project root");
    if !lexical.starts_with(root) {
        return Err(escape());
    }
    let canonical = match std::fs::canonicalize(&lexical) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("file not found: {}", rel_display(&lexical, root)));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", rel_display(&lexical, root))),
    };
    // A symlink inside the root may still point outside it.
    if !canonical.starts_with(root) {
        return Err(escape());
    }
    let rel = rel_display(&canonical, root);
    let text =
        std::fs::read_to_string(&canonical).map_err(|e| format!("cannot read {rel}: {e}"))?;
    Ok((canonical, rel, text))
}

// ---- line scanner ----

fn is_blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Column of the first key on the line, past any `- ` list markers.
fn content_col(line: &str) -> usize {
    let mut col = indent(line);
    let mut rest = &line[col..];
    while let Some(after) = rest.strip_prefix('-') {
        if !(after.is_empty() || after.starts_with(' ')) {
            break;
        }
        let spaces = after.len() - after.trim_start_matches(' ').len();
        col += 1 + spaces;
        rest = &after[spaces..];
    }
    col
}

/// Does the line hold `key:` at its content column?
fn has_key(line: &str, key: &str) -> bool {
    let col = content_col(line);
    let rest = &line[col.min(line.len())..];
    for quoted in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(after) = rest.strip_prefix(quoted.as_str()) {
            let after = after.trim_start_matches(' ');
            if let Some(value) = after.strip_prefix(':') {
                if value.is_empty() || value.starts_with([' ', '\t']) {
                    return true;
                }
            }
        }
    }
    false
}

impl YamlFile {
    fn root_span(&self) -> Option<Span> {
        Some(Span {
            start: 0,
            key_col: 0,
            end: self.lines.len(),
            keys_on_start: true,
        })
    }

    /// 1-based line of `path` inside the entry at `span`; the deepest part of the path that
    /// can be found (at worst the entry's own line).
    pub(crate) fn line_of(&self, span: Option<Span>, path: &[Seg]) -> Option<usize> {
        let span = span?;
        let mut cur = span;
        let mut best = if span.is_root() {
            None
        } else {
            Some(span.start + 1)
        };
        for seg in path {
            let next = match seg {
                Seg::Key(k) => self.find_key(cur, k),
                Seg::Index(i) => self.find_item(cur, *i),
            };
            match next {
                Some(s) => {
                    best = Some(s.start + 1);
                    cur = s;
                }
                None => break,
            }
        }
        best
    }

    fn find_key(&self, within: Span, key: &str) -> Option<Span> {
        let first = if within.keys_on_start {
            within.start
        } else {
            within.start + 1
        };
        let col = if within.keys_on_start {
            within.key_col
        } else {
            let l = (first..within.end).find(|&l| !is_blank(&self.lines[l]))?;
            let line = &self.lines[l];
            if line.trim_start().starts_with('-') {
                return None;
            }
            indent(line)
        };
        for l in first..within.end {
            let line = &self.lines[l];
            if is_blank(line) {
                continue;
            }
            let on_item_line = within.keys_on_start && l == within.start;
            if !on_item_line && indent(line) != col {
                continue;
            }
            if content_col(line) == col && has_key(line, key) {
                return Some(Span {
                    start: l,
                    key_col: col,
                    end: self.key_end(l, col, within.end),
                    keys_on_start: false,
                });
            }
        }
        None
    }

    /// End of the value of a key at `col` on line `l`: the next line at a smaller indent, or
    /// at the same indent unless it continues a list written flush with its key.
    fn key_end(&self, l: usize, col: usize, limit: usize) -> usize {
        (l + 1..limit)
            .find(|&n| {
                let line = &self.lines[n];
                !is_blank(line)
                    && (indent(line) < col
                        || (indent(line) == col && !line.trim_start().starts_with('-')))
            })
            .unwrap_or(limit)
    }

    fn item_lines(&self, within: Span) -> Vec<(usize, usize)> {
        let first = within.start + 1;
        let Some(dash_line) = (first..within.end).find(|&l| !is_blank(&self.lines[l])) else {
            return Vec::new();
        };
        let line = &self.lines[dash_line];
        if !line.trim_start().starts_with('-') {
            return Vec::new();
        }
        let dash_col = indent(line);
        (first..within.end)
            .filter(|&l| {
                let line = &self.lines[l];
                !is_blank(line) && indent(line) == dash_col && line.trim_start().starts_with('-')
            })
            .map(|l| (l, dash_col))
            .collect()
    }

    fn find_item(&self, within: Span, index: usize) -> Option<Span> {
        let items = self.item_lines(within);
        let &(l, dash_col) = items.get(index)?;
        let end = items.get(index + 1).map(|&(n, _)| n).unwrap_or_else(|| {
            (l + 1..within.end)
                .find(|&n| !is_blank(&self.lines[n]) && indent(&self.lines[n]) <= dash_col)
                .unwrap_or(within.end)
        });
        Some(Span {
            start: l,
            key_col: content_col(&self.lines[l]),
            end,
            keys_on_start: true,
        })
    }

    /// Spans of the items of the top-level `entries:` list, matched to `items` by position;
    /// when the text does not line up (flow style), by their `name:` lines.
    fn entry_spans(&self, items: &[Value]) -> Vec<Option<Span>> {
        let by_position = self
            .find_key(self.root_span().expect("root span"), "entries")
            .map(|entries| {
                let count = self.item_lines(entries).len();
                (0..count)
                    .filter_map(|i| self.find_item(entries, i))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if by_position.len() == items.len() {
            return by_position.into_iter().map(Some).collect();
        }
        let mut from = 0;
        let starts: Vec<Option<usize>> = items
            .iter()
            .map(|item| {
                let name = item.get("name")?.as_str()?;
                let l = (from..self.lines.len()).find(|&l| {
                    let line = &self.lines[l];
                    line.contains("name:") && line.contains(name)
                })?;
                // Flow style may put several entries on one line.
                from = l;
                Some(l)
            })
            .collect();
        starts
            .iter()
            .enumerate()
            .map(|(i, start)| {
                let start = (*start)?;
                let end = starts[i + 1..]
                    .iter()
                    .flatten()
                    .next()
                    .copied()
                    .unwrap_or(self.lines.len());
                Some(Span {
                    start,
                    key_col: content_col(&self.lines[start]),
                    end,
                    keys_on_start: true,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> YamlFile {
        YamlFile {
            display: PathBuf::from("r/_index.yaml"),
            dir: PathBuf::new(),
            lines: text.lines().map(str::to_string).collect(),
        }
    }

    fn split(text: &str) -> (Vec<RawEntry>, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let entries = split_file(&file(text), 0, text, &mut diags);
        (entries, diags)
    }

    const TEXT: &str = "\
version: \"1.0\"
namespace: app
meta:
  owner: team
entries:
  # db
  - name: db
    kind: db.sql.sqlite
    file: x.db
    lifecycle:
      auto_start: true
      requires:
        - a
        - b
  - kind: security.policy
    name: pol
    meta:
      owner: me
    policy:
      conditions:
        - field: actor.id
          operator: eq
          value: x
        - field: actor.meta.role
          operator: bogus
";

    #[test]
    fn splits_entries_with_lines_and_merged_meta() {
        let (entries, diags) = split(TEXT);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id.to_string(), "app:db");
        assert_eq!(entries[0].line, Some(7));
        assert_eq!(entries[0].data["file"], "x.db");
        assert!(!entries[0].data.contains_key("name"));
        assert_eq!(entries[0].meta["owner"], "team");
        assert_eq!(entries[1].line, Some(15));
        assert_eq!(entries[1].meta["owner"], "me");
    }

    #[test]
    fn finds_field_lines() {
        let (entries, _) = split(TEXT);
        let f = file(TEXT);
        let line = |e: usize, path: Vec<Seg>| f.line_of(entries[e].span, &path);
        assert_eq!(line(0, keys(&["file"])), Some(9));
        assert_eq!(line(0, keys(&["lifecycle", "auto_start"])), Some(11));
        let req1 = vec![
            Seg::Key("lifecycle".into()),
            Seg::Key("requires".into()),
            Seg::Index(1),
        ];
        assert_eq!(line(0, req1), Some(14));
        assert_eq!(line(1, keys(&["name"])), Some(16));
        let op = vec![
            Seg::Key("policy".into()),
            Seg::Key("conditions".into()),
            Seg::Index(1),
            Seg::Key("operator".into()),
        ];
        assert_eq!(line(1, op), Some(25));
        // Not present: the nearest enclosing line.
        assert_eq!(line(0, keys(&["lifecycle", "nothing"])), Some(10));
        assert_eq!(line(1, keys(&["file"])), Some(15));
    }

    #[test]
    fn single_entry_form() {
        let text = "namespace: app\nname: one\nkind: store.memory\nmax_size: 5\nversion: \"1\"\n";
        let (entries, diags) = split(text);
        assert!(diags.is_empty());
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id.to_string(), "app:one");
        assert_eq!(entries[0].line, Some(2));
        assert_eq!(entries[0].data.len(), 1);
        let f = file(text);
        assert_eq!(f.line_of(entries[0].span, &keys(&["max_size"])), Some(4));
    }

    #[test]
    fn literal_data_key_is_verbatim() {
        let text = "namespace: app\nentries:\n  - name: x\n    kind: k\n    other: 1\n    data:\n      a: 1\n";
        let (entries, _) = split(text);
        assert_eq!(entries[0].data.len(), 1);
        assert_eq!(entries[0].data["a"], 1);
    }

    #[test]
    fn files_without_namespace_are_skipped() {
        let (entries, diags) = split("entries:\n  - name: x\n    kind: y\n");
        assert!(entries.is_empty() && diags.is_empty());
        let (entries, diags) = split("- just\n- a list\n");
        assert!(entries.is_empty() && diags.is_empty());
    }

    #[test]
    fn malformed_yaml_names_the_line() {
        let (_, diags) = split("namespace: app\nentries:\n  - name: x\n   kind: [\n");
        assert_eq!(diags.len(), 1);
        assert!(diags[0].line.is_some(), "{:?}", diags[0]);
        assert!(diags[0].message.starts_with("invalid YAML: "));
    }

    #[test]
    fn entry_shape_problems() {
        let text = "namespace: app\nentries:\n  - kind: store.memory\n  - name: b\n  - name: \"a:b\"\n    kind: x\n  - 3\n";
        let (entries, diags) = split(text);
        assert!(entries.is_empty());
        let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            vec![
                "r/_index.yaml:3: field `name`: missing required field",
                "r/_index.yaml:4: entry app:b: field `kind`: missing required field",
                "r/_index.yaml:5: field `name`: invalid entry name \"a:b\" (non-empty, no `:` or spaces)",
                "r/_index.yaml:7: field `entries[3]`: entry must be a mapping",
            ]
        );
    }

    #[test]
    fn flow_style_falls_back_to_name_lines() {
        let text = "namespace: app\nentries: [{name: a, kind: k}, {name: b, kind: k}]\n";
        let (entries, _) = split(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].line, Some(2));
        assert_eq!(entries[1].line, Some(2));
    }

    #[test]
    fn bad_namespace() {
        let (_, diags) = split("namespace: \"a:b\"\nentries: []\n");
        assert_eq!(
            diags[0].to_string(),
            "r/_index.yaml:1: field `namespace`: invalid namespace \"a:b\" (dot-separated segments, no `:`)"
        );
    }
}
