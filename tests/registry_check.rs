//! `moonwire check` end to end: the real binary on the app's registry (must pass) and on
//! broken registries (must fail, listing every problem as `file:line: entry: field: message`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The app's registry and scripts, as `(relative path, text)`.
fn app_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for dir in ["registry", "scripts"] {
        for item in std::fs::read_dir(repo().join(dir)).expect("app dir") {
            let item = item.expect("app entry");
            let text = std::fs::read_to_string(item.path()).expect("app file");
            files.push((
                format!("{dir}/{}", item.file_name().to_string_lossy()),
                text,
            ));
        }
    }
    files
}

/// A fresh project root with `files` (paths relative to it).
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    for (rel, text) in files {
        write(root.path(), rel, text);
    }
    root
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The diagnostic lines (other stderr output, such as log lines, is ignored).
    fn diagnostics(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("registry/") || l.starts_with("scripts/"))
            .collect()
    }
}

/// Runs `moonwire check --registry registry` with `root` as the working directory.
fn check(root: &Path) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_moonwire"))
        .args(["check", "--registry", "registry"])
        .current_dir(root)
        .env_remove("MOONWIRE_TEST_UNSET")
        .output()
        .expect("run moonwire");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn app_registry_passes() {
    let root = tempfile::tempdir().expect("temp dir");
    for (rel, text) in app_files() {
        write(root.path(), &rel, &text);
    }
    let out = check(root.path());
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert_eq!(out.stdout.trim(), "ok: 37 entries");
}

/// The tutorial's layout keeps scripts beside `_index.yaml`: only the `file://` paths change.
#[test]
fn app_with_scripts_beside_the_registry_passes() {
    let root = tempfile::tempdir().expect("temp dir");
    for (rel, text) in app_files() {
        let name = rel.rsplit('/').next().unwrap().to_string();
        let text = text.replace("file://../scripts/", "file://");
        write(root.path(), &format!("registry/{name}"), &text);
    }
    let out = check(root.path());
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert_eq!(out.stdout.trim(), "ok: 37 entries");
}

const BROKEN: &str = "\
version: \"1.0\"
namespace: app

entries:
  - name: db
    kind: db.sql.sqlite
    lifecycle:
      auto_start: true

  - name: tokens
    kind: security.token_store
    store: app:token_data
    token_key: \"${env:MOONWIRE_TEST_UNSET}\"

  - name: mem
    kind: store.memory
    cleanup_interval: soon

  - name: processes
    kind: process.host

  - name: worker
    kind: process.lua
    source: file://worker.lua
    method: main

  - name: missing
    kind: process.lua
    source: file://../scripts/missing.lua
    method: main

  - name: worker-service
    kind: process.service
    process: app:mem
    host: app:processes

  - name: gateway
    kind: http.service
    addr: \":8081\"

  - name: router
    kind: http.router
    meta:
      server: app:gateway
    middleware:
      - cors
      - rate_limit

  - name: mystery
    kind: queue.kafka

  - name: a
    kind: store.memory
    lifecycle:
      requires: [b]

  - name: b
    kind: store.memory
    lifecycle:
      requires: [a]
";

#[test]
fn broken_registry_lists_every_problem() {
    let root = project(&[
        ("registry/_index.yaml", BROKEN),
        (
            "registry/worker.lua",
            "local function main()\n  return 0\n\nreturn { main = main }\n",
        ),
    ]);
    let out = check(root.path());
    assert_eq!(out.code, Some(1), "stdout:\n{}", out.stdout);
    assert_eq!(
        out.diagnostics(),
        [
            "registry/_index.yaml:5: entry app:db: field `file`: missing required field",
            "registry/_index.yaml:12: entry app:tokens: field `store`: unknown entry `app:token_data`",
            "registry/_index.yaml:13: entry app:tokens: field `token_key`: environment variable `MOONWIRE_TEST_UNSET` is not set",
            "registry/_index.yaml:17: entry app:mem: field `cleanup_interval`: invalid duration \"soon\" (expected Go syntax like \"500ms\" or \"1h30m\")",
            "registry/_index.yaml:29: entry app:missing: field `source`: file not found: scripts/missing.lua",
            "registry/_index.yaml:34: entry app:worker-service: field `process`: `app:mem` is a store.memory, expected process.lua",
            "registry/_index.yaml:47: entry app:router: field `middleware[1]`: unknown middleware `rate_limit` (known: api_auth, cors, metrics, token_auth, websocket_relay)",
            "registry/_index.yaml:50: entry app:mystery: field `kind`: unknown kind `queue.kafka` (known: db.sql.sqlite, store.memory, security.token_store, security.policy, process.host, process.lua, function.lua, process.service, http.service, http.router, http.endpoint, fs.directory, http.static)",
            "registry/_index.yaml:52: entry app:a: dependency cycle: app:a -> app:b -> app:a",
            "registry/worker.lua:4: entry app:worker: syntax error: 'end' expected (to close 'function' at line 1) near 'return'",
        ],
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let root = project(&[(
        "registry/_index.yaml",
        "namespace: app\nentries:\n  - name: a\n    kind: store.memory\n   bad: [\n",
    )]);
    let out = check(root.path());
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.diagnostics(),
        ["registry/_index.yaml:5: invalid YAML: did not find expected '-' indicator, while parsing a block collection at line 3 column 3 (column 4)"],
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn duplicate_ids_across_files_and_file_escape() {
    let root = project(&[
        (
            "registry/_index.yaml",
            "namespace: app\nentries:\n  - name: mem\n    kind: store.memory\n",
        ),
        (
            "registry/extra/more.yaml",
            "namespace: app\nentries:\n  - name: mem\n    kind: store.memory\n  - name: leak\n    kind: process.lua\n    source: file://../../../outside.lua\n    method: main\n",
        ),
        ("registry/notes.yaml", "title: no namespace, skipped\n"),
    ]);
    let out = check(root.path());
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.diagnostics(),
        [
            "registry/extra/more.yaml:3: entry app:mem: duplicate entry id (first defined at registry/_index.yaml:3)",
            "registry/extra/more.yaml:7: entry app:leak: field `source`: `file://../../../outside.lua` resolves outside the project root",
        ],
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn missing_registry_directory_fails() {
    let root = tempfile::tempdir().expect("temp dir");
    let out = check(root.path());
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("registry: registry directory not found"),
        "stderr:\n{}",
        out.stderr
    );
}
