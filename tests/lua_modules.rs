//! The Lua-level module tests in `tests/lua/*_test.lua`, run inside the real runtime: each
//! script becomes the body of a `process.lua` service in a generated registry, and its verdict
//! is one `TEST PASS/FAIL module.<name>` line.

#[path = "fixtures/proc_lib/harness.rs"]
mod harness;
mod support;

use std::path::Path;
use std::time::Duration;
use support::repo;

/// Wraps a module test script (a chunk that asserts and ends with `return "ok"`) so the runtime
/// can run it: the chunk becomes a local function (on its first line, so error line numbers
/// match the original file) and `main` reports how it ended.
fn wrap(name: &str, script: &str) -> String {
    format!(
        "local function body() {script}\nend\n\
         return {{ main = function()\n\
         \x20   local ok, r = pcall(body)\n\
         \x20   if ok and r == \"ok\" then print(\"TEST PASS module.{name} \")\n\
         \x20   else print(\"TEST FAIL module.{name}: \" .. tostring(r)) end\n\
         \x20   return \"done\"\n\
         end }}\n"
    )
}

/// A project whose registry runs `tests/lua/<name>_test.lua` as a service with `modules`,
/// plus `extra` registry entries (YAML list items).
fn module_project(name: &str, modules: &[&str], extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    std::fs::create_dir_all(&registry).unwrap();
    let script = std::fs::read_to_string(repo().join(format!("tests/lua/{name}_test.lua")))
        .unwrap_or_else(|e| panic!("read tests/lua/{name}_test.lua: {e}"));
    std::fs::write(
        registry.join(format!("{name}_test.lua")),
        wrap(name, &script),
    )
    .unwrap();
    harness::add_testlib(&registry);
    let yaml = format!(
        "version: \"1.0\"\nnamespace: app\nentries:\n{common}{extra}\n\
         \x20 - name: {name}_test\n    kind: process.lua\n    source: file://{name}_test.lua\n\
         \x20   method: main\n    modules: [{modules}]\n\
         \x20 - name: {name}_test-service\n    kind: process.service\n    process: app:{name}_test\n\
         \x20   host: app:host\n    lifecycle:\n      auto_start: true\n",
        common = harness::COMMON_ENTRIES,
        modules = modules.join(", "),
    );
    std::fs::write(registry.join("_index.yaml"), yaml).unwrap();
    dir
}

fn run_module(name: &str, modules: &[&str], extra: &str) -> harness::LuaRun {
    let run = harness::start_in(module_project(name, modules, extra));
    run.expect_pass(&[&format!("module.{name}")], Duration::from_secs(10));
    run
}

#[test]
fn json_module() {
    run_module("json", &["json"], "");
}

#[test]
fn crypto_module() {
    run_module("crypto", &["crypto"], "");
}

#[test]
fn time_module() {
    run_module("time", &["time"], "");
}

#[test]
fn logger_module() {
    let run = run_module("logger", &["logger"], "");
    // What the script logged, as it reaches the log: message, fields, pid and entry.
    for needle in [
        "handler started user_id=u1",
        "dot call n=1",
        "warn line",
        "child line",
        "named line",
        "deeper line",
    ] {
        let line = run.wait_for(needle, Duration::from_secs(2));
        run.check(
            line.contains("pid=") && line.contains("app:logger_test"),
            &format!("{needle:?} carries pid and entry: {line}"),
        );
    }
    let child = run.wait_for("child line", Duration::from_secs(1));
    run.check(
        child.contains("request_id=r1"),
        "logger:with fields on child lines",
    );
    let deeper = run.wait_for("deeper line", Duration::from_secs(1));
    run.check(
        deeper.contains("k=v") && deeper.contains("WARN"),
        "with + named + warn level",
    );
    let debug_lines = run.count("debug line");
    run.check(
        debug_lines == 0,
        "debug lines are filtered at the info level",
    );
}

#[test]
fn sql_module_against_a_sqlite_entry() {
    let extra = "  - name: db\n    kind: db.sql.sqlite\n    file: \"./data/sql_test.db\"\n    lifecycle:\n      auto_start: true\n";
    let run = run_module("sql", &["sql"], extra);
    run.check(
        Path::new(&run.dir.path().join("data/sql_test.db")).exists(),
        "the database file was created under the project",
    );
}

#[test]
fn wrapped_failures_are_reported_not_hidden() {
    // The wrapper itself: a failing assert is a FAIL line with the original line number.
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    std::fs::create_dir_all(&registry).unwrap();
    std::fs::write(
        registry.join("bad_test.lua"),
        wrap(
            "bad",
            "local x = 1\nassert(x == 2, \"x is not 2\")\nreturn \"ok\"\n",
        ),
    )
    .unwrap();
    harness::add_testlib(&registry);
    let yaml = format!(
        "version: \"1.0\"\nnamespace: app\nentries:\n{}\n  - name: bad\n    kind: process.lua\n    source: file://bad_test.lua\n    method: main\n  - name: bad-service\n    kind: process.service\n    process: app:bad\n    host: app:host\n    lifecycle:\n      auto_start: true\n",
        harness::COMMON_ENTRIES
    );
    std::fs::write(registry.join("_index.yaml"), yaml).unwrap();
    let run = harness::start_in(dir);
    let line = run.wait_for("TEST FAIL module.bad", Duration::from_secs(10));
    run.check(
        line.contains("bad_test.lua:2: x is not 2"),
        &format!("failure keeps its line: {line}"),
    );
}
