//! Hot reload (issue 5) through the real binary: each test copies a `tests/fixtures/reload_*`
//! project (its `registry/` and, for `reload_app`, a `scripts/` folder beside it), runs
//! `moonwire run` with watching on, edits files under it (rename-over and in-place saves) and
//! polls for the new behaviour.
//!
//! The Tests paragraph, one test each: `an_endpoint_answer_changes_…`,
//! `a_service_restarts_with_new_code_…`, `an_upgradable_process_keeps_…`,
//! `a_syntax_error_or_invalid_registry_…`, `a_new_endpoint_appears_…`,
//! `an_open_websocket_stays_open_…`, `rapid_repeated_saves_cause_one_reload`; plus the
//! `http.service` rebind, old code for processes that did not opt in, imports, dependency
//! order, and watcher edge cases. `#[ignore]`d tests document bugs outside the reload path.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{copy_dir, field, repo, request, Moonwire};
use tokio_tungstenite::tungstenite::Message;

/// How long new behaviour may take to show up: generous, since tests share two cores (the
/// latency target itself, 300 ms at p95, is measured by `bench/reload/run.sh`).
const DEADLINE: Duration = Duration::from_secs(5);

/// A temp project holding `tests/fixtures/<name>/` as its root.
fn project(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures").join(name), dir.path());
    dir
}

/// Saves like most editors: the whole text under a temporary name in the same folder, then a
/// rename over the original (an atomic replace with a new inode).
fn save_by_rename(path: &Path, text: &str) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let tmp = path.with_file_name(format!("{name}.tmp-save"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Saves in place: truncate and rewrite the same inode (`echo > file`, vim's `backupcopy=yes`).
fn save_in_place(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Replaces the first `from` with `to` in a file that must contain it, saving with `save`.
fn edit(path: &Path, from: &str, to: &str, save: fn(&Path, &str)) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    save(path, &text.replacen(from, to, 1));
}

/// Polls `probe` every 10 ms until it yields a value; after [`DEADLINE`] panics with the log.
fn eventually<T>(mw: &Moonwire, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "not within {DEADLINE:?}: {what}; log:\n{}",
                mw.logs().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the log has `n` lines containing `needle`; returns the `n`-th.
fn nth_line(mw: &Moonwire, needle: &str, n: usize) -> String {
    eventually(mw, &format!("{n} log line(s) with {needle:?}"), || {
        mw.logs()
            .into_iter()
            .filter(|l| l.contains(needle))
            .nth(n - 1)
    })
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = request(addr, "GET", path, &[], b"");
    (r.status, r.text())
}

/// `get_json` once `path` answers 200: a service registers its name a moment after the server
/// starts listening (or after an upgrade), and a request in between gets a 5xx.
fn get_json_when_ready(mw: &Moonwire, path: &str) -> serde_json::Value {
    eventually(mw, &format!("GET {path} answering 200"), || {
        let r = request(mw.addr(), "GET", path, &[], b"");
        (r.status == 200).then(|| r.json())
    })
}

fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let r = request(addr, "GET", path, &[], b"");
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// One persistent HTTP/1.1 connection, to show that a reload does not drop open connections.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn open(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        KeepAlive {
            stream,
            buf: Vec::new(),
        }
    }

    fn get(&mut self, path: &str) -> (u16, String) {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no Content-Length in {head}"));
        while self.buf.len() < head_end + 4 + len {
            self.fill();
        }
        let body =
            String::from_utf8_lossy(&self.buf[head_end + 4..head_end + 4 + len]).into_owned();
        self.buf.drain(..head_end + 4 + len);
        (status, body)
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).expect("keep-alive read");
        assert!(n > 0, "the server closed the keep-alive connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(addr: SocketAddr) -> Ws {
    let url = format!("ws://{addr}/ws/echo");
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("connect timed out")
    .expect("WebSocket handshake")
    .0
}

/// Sends `text` and returns the very next frame, which must be a text frame: a Close (or any
/// other frame) in between means the connection did not survive.
async fn ws_echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::Text(text.into())).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no frame within 5s")
        .expect("stream ended")
        .expect("frame error");
    match frame {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Lines of the `reload applied` log entries so far.
fn applied(mw: &Moonwire) -> Vec<String> {
    mw.logs()
        .into_iter()
        .filter(|l| l.contains("reload applied"))
        .collect()
}

fn took_ms(line: &str) -> u64 {
    field(line, "took_ms").parse().expect("took_ms is a number")
}

#[test]
fn an_endpoint_answer_changes_on_rename_and_in_place_saves() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let script = dir.path().join("registry/version.lua");
    assert_eq!(get(mw.addr(), "/version"), (200, "v1".into()));
    let mut conn = KeepAlive::open(mw.addr());
    assert_eq!(conn.get("/version"), (200, "v1".into()));

    edit(&script, "\"v1\"", "\"v2\"", save_by_rename);
    eventually(&mw, "v2 after a rename-over save", || {
        (get(mw.addr(), "/version") == (200, "v2".into())).then_some(())
    });
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "changed"), "app:version,app:version.endpoint");
    assert_eq!(field(&line, "added"), "");
    assert_eq!(field(&line, "removed"), "");
    assert_eq!(
        field(&line, "restarted"),
        "",
        "a function change restarts nothing"
    );
    assert!(took_ms(&line) < 5000, "{line}");

    edit(&script, "\"v2\"", "\"v3\"", save_in_place);
    eventually(&mw, "v3 after an in-place save", || {
        (get(mw.addr(), "/version") == (200, "v3".into())).then_some(())
    });
    nth_line(&mw, "reload applied", 2);
    // The connection opened before both reloads is still served, by the newest code.
    assert_eq!(conn.get("/version"), (200, "v3".into()));
}

#[test]
fn a_service_restarts_with_new_code_and_nothing_else_is_touched() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let old = field(
        &mw.wait_for("worker running version=1", DEADLINE),
        "worker_pid",
    );
    let counter = get_json_when_ready(&mw, "/counter");
    assert_eq!(counter["count"], 1);

    edit(
        &dir.path().join("scripts/worker.lua"),
        "VERSION = 1",
        "VERSION = 2",
        save_by_rename,
    );
    let new = field(
        &mw.wait_for("worker running version=2", DEADLINE),
        "worker_pid",
    );
    assert_ne!(new, old, "a restarted service runs in a new process");
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "changed"), "app:worker,app:worker-service");
    assert_eq!(field(&line, "restarted"), "app:worker-service");
    assert_eq!(field(&line, "outdated"), "");
    assert_eq!(mw.count("service stopped service=app:worker-service"), 1);
    assert_eq!(mw.count("service started service=app:worker-service"), 2);

    // The other service was not touched: same process, same state, never restarted.
    let after = get_json(mw.addr(), "/counter");
    assert_eq!(after["pid"], counter["pid"]);
    assert_eq!(after["count"], 2);
    assert_eq!(after["version"], 1);
    assert_eq!(mw.count("service started service=app:counter-service"), 1);
    assert_eq!(mw.count("counter outdated"), 0);
}

#[test]
fn an_upgradable_process_keeps_its_pid_name_mailbox_and_state() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let script = dir.path().join("scripts/counter.lua");
    let first = get_json_when_ready(&mw, "/counter");
    assert_eq!(first["version"], 1);
    assert_eq!(first["named"], true);
    let pid = first["pid"].clone();
    let mut count = first["count"].as_i64().unwrap();

    for (n, version) in [(1usize, 2i64), (2, 3)] {
        if n == 1 {
            // An unrelated change in the same reload is no source of this process's OUTDATED.
            edit(
                &dir.path().join("registry/version.lua"),
                "\"v1\"",
                "\"v2\"",
                save_by_rename,
            );
        }
        edit(
            &script,
            &format!("VERSION = {}", version - 1),
            &format!("VERSION = {version}"),
            if n == 1 {
                save_by_rename
            } else {
                save_in_place
            },
        );
        // Every answer, before, during and after the upgrade, comes from the same process with
        // the count carried on: a request queued while it upgrades stays in its mailbox, and it
        // is reached by the name it registered only once, at first start.
        eventually(&mw, &format!("counter on version {version}"), || {
            let s = get_json(mw.addr(), "/counter");
            count += 1;
            assert_eq!(s["pid"], pid, "{s}");
            assert_eq!(s["count"], count, "state lost: {s}");
            assert_eq!(s["named"], true, "{s}");
            (s["version"] == version).then_some(())
        });
        let line = nth_line(&mw, "reload applied", n);
        assert_eq!(field(&line, "outdated"), pid.as_str().unwrap());
        assert_eq!(
            field(&line, "restarted"),
            "",
            "an upgradable child is not restarted"
        );
        let outdated = nth_line(&mw, "counter outdated", n);
        let sources = field(&outdated, "sources");
        assert!(
            sources.split(',').any(|s| s == "app:counter"),
            "OUTDATED sources name the process's own entry: {outdated}"
        );
        assert!(
            !sources.contains("app:version"),
            "OUTDATED sources name only what the process depends on: {outdated}"
        );
    }
    assert_eq!(mw.count("service started service=app:counter-service"), 1);
    assert_eq!(mw.count("process upgraded"), 2);
}

#[test]
fn a_syntax_error_or_invalid_registry_is_rejected_whole_and_the_old_code_keeps_serving() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let version = dir.path().join("registry/version.lua");
    let index = dir.path().join("registry/_index.yaml");
    let worker = dir.path().join("scripts/worker.lua");
    let good_version = std::fs::read_to_string(&version).unwrap();
    let good_index = std::fs::read_to_string(&index).unwrap();
    let good_worker = std::fs::read_to_string(&worker).unwrap();

    // A Lua syntax error.
    save_by_rename(
        &version,
        &good_version
            .replace("\"v1\"", "\"v2\"")
            .replace("end\n", "\n"),
    );
    nth_line(&mw, "reload rejected", 1);
    assert!(
        mw.logs()
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("version.lua")),
        "the diagnostics name the file:\n{}",
        mw.logs().join("\n")
    );
    assert_eq!(get(mw.addr(), "/version"), (200, "v1".into()));

    // An invalid registry: a dangling reference.
    save_in_place(&version, &good_version);
    save_in_place(
        &index,
        &good_index.replace("func: app:version\n", "func: app:nowhere\n"),
    );
    nth_line(&mw, "reload rejected", 2);
    assert!(
        mw.logs().iter().any(|l| l.contains("app:nowhere")),
        "the diagnostics name the bad reference:\n{}",
        mw.logs().join("\n")
    );
    assert_eq!(get(mw.addr(), "/version"), (200, "v1".into()));

    // One good and one broken file in the same change: neither is applied.
    save_by_rename(&index, &good_index);
    save_by_rename(&version, &good_version.replace("\"v1\"", "\"v2\""));
    save_by_rename(
        &worker,
        &good_worker.replace("local VERSION = 1", "local VERSION = = 2"),
    );
    nth_line(&mw, "reload rejected", 3);
    assert_eq!(get(mw.addr(), "/version"), (200, "v1".into()));
    assert_eq!(
        mw.count("worker running"),
        1,
        "the worker was not restarted"
    );
    assert_eq!(applied(&mw).len(), 0);

    // Fixing the broken file applies the whole change.
    save_by_rename(&worker, &good_worker.replace("VERSION = 1", "VERSION = 2"));
    eventually(&mw, "v2 once the change is whole", || {
        (get(mw.addr(), "/version") == (200, "v2".into())).then_some(())
    });
    mw.wait_for("worker running version=2", DEADLINE);
}

#[test]
fn a_new_endpoint_appears_and_a_removed_one_answers_404() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let index = dir.path().join("registry/_index.yaml");
    let good_index = std::fs::read_to_string(&index).unwrap();
    assert_eq!(get(mw.addr(), "/hello").0, 404);

    // The new script lives in a folder nobody watched yet.
    let hello = dir.path().join("extra/hello.lua");
    std::fs::create_dir_all(hello.parent().unwrap()).unwrap();
    let script = "local http = require(\"http\")\n\
                  return { handler = function() http.response():write(\"hello-v1\") end }\n";
    std::fs::write(&hello, script).unwrap();
    let added = "
  - name: hello
    kind: function.lua
    source: file://../extra/hello.lua
    method: handler
    modules: [http]

  - name: hello.endpoint
    kind: http.endpoint
    meta:
      router: app:api
    method: GET
    path: /hello
    func: app:hello
";
    save_by_rename(&index, &format!("{good_index}{added}"));
    eventually(&mw, "GET /hello answers", || {
        (get(mw.addr(), "/hello") == (200, "hello-v1".into())).then_some(())
    });
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "added"), "app:hello,app:hello.endpoint");
    assert_eq!(field(&line, "restarted"), "");
    assert_eq!(get(mw.addr(), "/version"), (200, "v1".into()));

    // The folder of the new file:// target is watched from now on.
    save_in_place(&hello, &script.replace("hello-v1", "hello-v2"));
    eventually(&mw, "GET /hello answers the edited script", || {
        (get(mw.addr(), "/hello") == (200, "hello-v2".into())).then_some(())
    });

    // Remove the /version endpoint and its function, and the worker service.
    let mut text = std::fs::read_to_string(&index).unwrap();
    for block in [
        "  - name: version\n",
        "  - name: version.endpoint\n",
        "  - name: worker-service\n",
    ] {
        let start = text.find(block).unwrap_or_else(|| panic!("no {block}"));
        let end = text[start + 4..]
            .find("\n  - name:")
            .map_or(text.len(), |i| start + 4 + i + 1);
        text.replace_range(start..end, "");
    }
    save_by_rename(&index, &text);
    eventually(&mw, "GET /version answers 404", || {
        (get(mw.addr(), "/version").0 == 404).then_some(())
    });
    let line = nth_line(&mw, "reload applied", 3);
    assert_eq!(
        field(&line, "removed"),
        "app:version,app:version.endpoint,app:worker-service"
    );
    mw.wait_for("service stopped service=app:worker-service", DEADLINE);
    assert_eq!(mw.count("service started service=app:worker-service"), 1);
    assert_eq!(get(mw.addr(), "/hello"), (200, "hello-v2".into()));
}

/// Names of the binary's worker threads (`moonwire-conn-N`, `moonwire-proc-N`), sorted.
fn worker_threads(mw: &Moonwire) -> Vec<String> {
    let tasks = format!("/proc/{}/task", mw.os_pid());
    let mut names: Vec<String> = std::fs::read_dir(tasks)
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("moonwire-conn-") || n.starts_with("moonwire-proc-"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sizes_are_resized_live_and_restart_nothing() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let counter = get_json_when_ready(&mw, "/counter");
    let started = mw.count("service started");
    let mut ws = ws_connect(mw.addr()).await;
    assert_eq!(ws_echo(&mut ws, "a").await, "echo-v1:a");
    let index = dir.path().join("registry/_index.yaml");
    assert_eq!(
        worker_threads(&mw),
        [
            "moonwire-conn-0",
            "moonwire-conn-1",
            "moonwire-proc-0",
            "moonwire-proc-1"
        ],
        "the fixture's two process workers and the default two connection workers"
    );

    // Edits the registry and waits for the `n`th pool resize; returns its log line.
    let resize = |from: &str, to: &str, n: usize| {
        edit(&index, from, to, save_by_rename);
        eventually(&mw, "a pool resize", || {
            (mw.count("worker pools resized") == n).then_some(())
        });
        nth_line(&mw, "worker pools resized", n)
    };

    // More process workers, and connection workers given explicitly.
    let line = resize("      workers: 2\n", "      workers: 3\n", 1);
    assert_eq!(field(&line, "process_workers"), "3", "{line}");
    assert_eq!(field(&line, "was_process_workers"), "2", "{line}");
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "resized"), "app:host");
    assert_eq!(
        field(&line, "changed"),
        "",
        "no dependent of the host is touched"
    );
    assert_eq!(field(&line, "restarted"), "");
    eventually(&mw, "a third process worker", || {
        worker_threads(&mw)
            .contains(&"moonwire-proc-2".to_string())
            .then_some(())
    });

    resize(
        "    addr: \":0\"\n",
        "    addr: \":0\"\n    host:\n      worker_count: 1\n",
        2,
    );
    let line = nth_line(&mw, "reload applied", 2);
    assert_eq!(field(&line, "resized"), "app:gateway");
    assert_eq!(field(&line, "restarted"), "", "the server keeps its socket");

    // Shrinking the process pool: the services keep running wherever they are.
    let line = resize("      workers: 3\n", "      workers: 1\n", 3);
    assert_eq!(field(&line, "process_workers"), "1", "{line}");
    assert_eq!(field(&line, "connection_workers"), "1", "{line}");

    // Nothing was restarted: the same counter process with its state, the same open socket,
    // and new connections are still served.
    let after = get_json(mw.addr(), "/counter");
    assert_eq!(after["pid"], counter["pid"]);
    assert_eq!(after["count"], 2);
    assert_eq!(
        mw.count("service started"),
        started,
        "no service started again"
    );
    assert_eq!(ws_echo(&mut ws, "b").await, "echo-v1:b");
    assert_eq!(get(mw.addr(), "/version"), (200, "v1".into()));
    let mut fresh = ws_connect(mw.addr()).await;
    assert_eq!(ws_echo(&mut fresh, "c").await, "echo-v1:c");
    assert_eq!(mw.count("service stopped"), 0);
    ws.close(None).await.unwrap();
    fresh.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_stays_open_across_an_unrelated_reload() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let mut ws = ws_connect(mw.addr()).await;
    assert_eq!(ws_echo(&mut ws, "a").await, "echo-v1:a");

    edit(
        &dir.path().join("registry/version.lua"),
        "\"v1\"",
        "\"v2\"",
        save_by_rename,
    );
    eventually(&mw, "v2 served", || {
        (get(mw.addr(), "/version") == (200, "v2".into())).then_some(())
    });
    nth_line(&mw, "reload applied", 1);
    assert_eq!(ws_echo(&mut ws, "b").await, "echo-v1:b");

    // A route-table change on the same server (a new endpoint) does not drop it either.
    let index = dir.path().join("registry/_index.yaml");
    let text = std::fs::read_to_string(&index).unwrap();
    save_in_place(
        &index,
        &format!(
            "{text}
  - name: version2.endpoint
    kind: http.endpoint
    meta:
      router: app:api
    method: GET
    path: /version2
    func: app:version
"
        ),
    );
    eventually(&mw, "GET /version2 answers", || {
        (get(mw.addr(), "/version2") == (200, "v2".into())).then_some(())
    });
    assert_eq!(ws_echo(&mut ws, "c").await, "echo-v1:c");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_did_not_opt_in_finish_on_their_old_code() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let mut old = ws_connect(mw.addr()).await;
    assert_eq!(ws_echo(&mut old, "a").await, "echo-v1:a");

    edit(
        &dir.path().join("scripts/ws_echo.lua"),
        "echo-v1",
        "echo-v2",
        save_by_rename,
    );
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "changed"), "app:ws_echo");
    // The open connection's handler keeps the code it started with; a new one gets new code.
    assert_eq!(ws_echo(&mut old, "b").await, "echo-v1:b");
    let mut new = ws_connect(mw.addr()).await;
    assert_eq!(ws_echo(&mut new, "c").await, "echo-v2:c");
    assert_eq!(ws_echo(&mut old, "d").await, "echo-v1:d");
}

#[test]
fn rapid_repeated_saves_cause_one_reload() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let script = dir.path().join("registry/version.lua");
    let text = std::fs::read_to_string(&script).unwrap();
    // A busy CI machine can deschedule this thread for longer than the debounce window, and
    // then the files really were quiet in between: such a gap may start a second reload.
    let mut quiet_gaps = 0;
    let mut last_save: Option<Instant> = None;
    for i in 1..=10 {
        let save = if i % 2 == 0 {
            save_in_place
        } else {
            save_by_rename
        };
        if last_save.is_some_and(|t| t.elapsed() >= Duration::from_millis(40)) {
            quiet_gaps += 1;
        }
        save(&script, &text.replace("\"v1\"", &format!("\"v1.{i}\"")));
        last_save = Some(Instant::now());
        std::thread::sleep(Duration::from_millis(5));
    }
    eventually(&mw, "the last save served", || {
        (get(mw.addr(), "/version") == (200, "v1.10".into())).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let lines = applied(&mw);
    assert!(
        !lines.is_empty() && lines.len() <= 1 + quiet_gaps,
        "one reload for one burst ({quiet_gaps} quiet gaps of 40 ms or more between saves):\n{}",
        lines.join("\n")
    );
    assert_eq!(get(mw.addr(), "/version"), (200, "v1.10".into()));
}

#[test]
fn a_changed_http_service_addr_rebinds() {
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let first = free_port();
    let dir = project("reload_rebind");
    let mw = Moonwire::launch(
        dir.path(),
        true,
        &[],
        &[("RELOAD_ADDR", &first.to_string())],
    );
    assert_eq!(mw.addr(), first, "no --addr: the entry's own addr is used");
    assert_eq!(get(first, "/version"), (200, "v1".into()));

    let second = free_port();
    edit(
        &dir.path().join("registry/_index.yaml"),
        "\"${env:RELOAD_ADDR}\"",
        &format!("\"{second}\""),
        save_by_rename,
    );
    let line = nth_line(&mw, "listening", 2);
    assert_eq!(field(&line, "addr"), second.to_string());
    assert_eq!(get(second, "/version"), (200, "v1".into()));
    let applied = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&applied, "restarted"), "app:gateway");
    eventually(&mw, "the old address is closed", || {
        TcpStream::connect_timeout(&first, Duration::from_millis(200))
            .is_err()
            .then_some(())
    });

    // Another server setting restarts it on the same address.
    edit(
        &dir.path().join("registry/_index.yaml"),
        "idle: 30s",
        "idle: 60s",
        save_in_place,
    );
    let applied = nth_line(&mw, "reload applied", 2);
    assert_eq!(field(&applied, "restarted"), "app:gateway");
    let line = nth_line(&mw, "listening", 3);
    assert_eq!(field(&line, "addr"), second.to_string());
    assert_eq!(get(second, "/version"), (200, "v1".into()));
}

#[test]
fn a_changed_service_entry_with_an_upgradable_child_only_sends_it_outdated() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    let first = get_json_when_ready(&mw, "/counter");
    edit(
        &dir.path().join("registry/_index.yaml"),
        "    process: app:counter\n    host: app:host\n    lifecycle:\n      auto_start: true\n      stop_timeout: 2s\n",
        "    process: app:counter\n    host: app:host\n    lifecycle:\n      auto_start: true\n      stop_timeout: 3s\n",
        save_by_rename,
    );
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "changed"), "app:counter-service");
    assert_eq!(field(&line, "restarted"), "");
    assert_eq!(field(&line, "outdated"), first["pid"].as_str().unwrap());
    // The child is told (§10.1: "an upgradable child only gets OUTDATED") and upgrades itself.
    let outdated = nth_line(&mw, "counter outdated", 1);
    assert_eq!(field(&outdated, "sources"), "app:counter-service");
    nth_line(&mw, "process upgraded", 1);
    let after = get_json_when_ready(&mw, "/counter");
    assert_eq!(after["pid"], first["pid"]);
    assert_eq!(after["count"], 2);
    assert_eq!(mw.count("service started service=app:counter-service"), 1);
}

#[test]
fn routes_switch_without_waiting_for_a_slow_service_restart() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    mw.wait_for("slow running version=1", DEADLINE);
    let index = dir.path().join("registry/_index.yaml");
    let text = std::fs::read_to_string(&index).unwrap();
    // One change: the slow service's code (its old process needs 1.5 s to stop) and a route.
    edit(
        &dir.path().join("scripts/slow.lua"),
        "VERSION = 1",
        "VERSION = 2",
        save_by_rename,
    );
    save_by_rename(
        &index,
        &format!(
            "{text}
  - name: quick.endpoint
    kind: http.endpoint
    meta:
      router: app:api
    method: GET
    path: /quick
    func: app:version
"
        ),
    );
    eventually(&mw, "GET /quick answers", || {
        (get(mw.addr(), "/quick") == (200, "v1".into())).then_some(())
    });
    assert_eq!(
        mw.count("service stopped service=app:slow-service"),
        0,
        "the new route answered only after the slow service had stopped:\n{}",
        mw.logs().join("\n")
    );
    mw.wait_for("slow running version=2", DEADLINE);
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "restarted"), "app:slow-service");
    assert!(took_ms(&line) >= 1500, "{line}");
}

#[test]
fn subfolders_of_the_registry_stay_watched() {
    let dir = project("reload_nested");
    let mw = Moonwire::start_watching(dir.path(), true);
    let sub = dir.path().join("registry/sub");
    assert_eq!(get(mw.addr(), "/sub"), (200, "sub-v1".into()));
    edit(&sub.join("hello.lua"), "sub-v1", "sub-v2", save_in_place);
    eventually(&mw, "GET /sub answers sub-v2", || {
        (get(mw.addr(), "/sub") == (200, "sub-v2".into())).then_some(())
    });

    // The subfolder stops holding any file:// target...
    let yaml = std::fs::read_to_string(sub.join("_index.yaml")).unwrap();
    let start = yaml.find("  - name: hello\n").unwrap();
    let end = yaml.find("  - name: hello.endpoint\n").unwrap();
    let mut yaml = yaml.clone();
    yaml.replace_range(start..end, "");
    let yaml = yaml.replace("func: hello\n", "func: app:top\n");
    save_by_rename(&sub.join("_index.yaml"), &yaml);
    eventually(&mw, "GET /sub answers top-v1", || {
        (get(mw.addr(), "/sub") == (200, "top-v1".into())).then_some(())
    });

    // ...and is still watched as part of the registry.
    edit(
        &sub.join("_index.yaml"),
        "path: /sub\n",
        "path: /sub2\n",
        save_in_place,
    );
    eventually(&mw, "GET /sub2 answers", || {
        (get(mw.addr(), "/sub2") == (200, "top-v1".into())).then_some(())
    });
    assert_eq!(get(mw.addr(), "/sub").0, 404);
    edit(
        &dir.path().join("registry/top.lua"),
        "top-v1",
        "top-v2",
        save_by_rename,
    );
    eventually(&mw, "GET /sub2 answers top-v2", || {
        (get(mw.addr(), "/sub2") == (200, "top-v2".into())).then_some(())
    });

    // A new subfolder with its own definitions is picked up; a deleted definition file removes
    // its entries.
    let more = dir.path().join("registry/more");
    std::fs::create_dir_all(&more).unwrap();
    std::fs::write(
        more.join("_index.yaml"),
        "version: \"1.0\"\nnamespace: app.more\nentries:\n  - name: more.endpoint\n    \
         kind: http.endpoint\n    meta:\n      router: app:api\n    method: GET\n    \
         path: /more\n    func: app:top\n",
    )
    .unwrap();
    eventually(&mw, "GET /more answers", || {
        (get(mw.addr(), "/more") == (200, "top-v2".into())).then_some(())
    });
    std::fs::remove_file(sub.join("_index.yaml")).unwrap();
    eventually(&mw, "GET /sub2 answers 404", || {
        (get(mw.addr(), "/sub2").0 == 404).then_some(())
    });
    assert_eq!(get(mw.addr(), "/more"), (200, "top-v2".into()));

    // A folder moved in and out as a whole: the only events name the folder, not its files.
    let staged = dir.path().join("staging/moved");
    copy_dir(&more, &staged);
    let moved_yaml = std::fs::read_to_string(staged.join("_index.yaml"))
        .unwrap()
        .replace("app.more", "app.moved")
        .replace("/more", "/moved");
    std::fs::write(staged.join("_index.yaml"), moved_yaml).unwrap();
    std::fs::rename(&staged, dir.path().join("registry/moved")).unwrap();
    eventually(&mw, "GET /moved answers", || {
        (get(mw.addr(), "/moved") == (200, "top-v2".into())).then_some(())
    });
    std::fs::rename(&more, dir.path().join("staging/more")).unwrap();
    eventually(&mw, "GET /more answers 404", || {
        (get(mw.addr(), "/more").0 == 404).then_some(())
    });
}

#[test]
fn invalidations_merge_into_one_undelivered_outdated_event() {
    let dir = project("reload_outdated");
    let mw = Moonwire::start_watching(dir.path(), false);
    mw.wait_for("lazy waiting", DEADLINE);
    let script = dir.path().join("registry/lazy.lua");
    edit(&script, "revision 1", "revision 2", save_by_rename);
    nth_line(&mw, "reload applied", 1);
    edit(&script, "revision 2", "revision 3", save_by_rename);
    nth_line(&mw, "reload applied", 2);
    let line = mw.wait_for("lazy drained", DEADLINE);
    assert_eq!(field(&line, "outdated"), "1", "{line}");
    let sources = field(&line, "sources");
    let mut list: Vec<&str> = sources.split(',').collect();
    list.sort();
    list.dedup();
    assert_eq!(
        list.len(),
        sources.split(',').count(),
        "no duplicates: {line}"
    );
    assert!(list.contains(&"app:lazy"), "{line}");
}

#[test]
fn a_changed_import_restarts_and_outdates_what_imports_it() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    mw.wait_for("worker running version=1 lib=lib-v1", DEADLINE);
    let first = get_json_when_ready(&mw, "/counter");
    assert_eq!(first["lib"], "lib-v1");
    assert_eq!(get(mw.addr(), "/lib"), (200, "lib-v1".into()));

    edit(
        &dir.path().join("scripts/lib.lua"),
        "lib-v1",
        "lib-v2",
        save_by_rename,
    );
    eventually(&mw, "GET /lib answers lib-v2", || {
        (get(mw.addr(), "/lib") == (200, "lib-v2".into())).then_some(())
    });
    mw.wait_for("worker running version=1 lib=lib-v2", DEADLINE);
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "restarted"), "app:worker-service");
    assert_eq!(field(&line, "outdated"), first["pid"].as_str().unwrap());
    let outdated = nth_line(&mw, "counter outdated", 1);
    let mut sources: Vec<String> = field(&outdated, "sources")
        .split(',')
        .map(String::from)
        .collect();
    sources.sort();
    assert!(
        sources.contains(&"app:lib".into()) && sources.contains(&"app:counter".into()),
        "{outdated}"
    );
    assert!(
        !sources
            .iter()
            .any(|s| s.starts_with("app:worker") || s.starts_with("app:lib_get")),
        "{outdated}"
    );
    eventually(&mw, "the upgraded counter uses lib-v2", || {
        let s = get_json(mw.addr(), "/counter");
        assert_eq!(s["pid"], first["pid"]);
        (s["lib"] == "lib-v2").then_some(())
    });
}

#[test]
fn a_replaced_scripts_folder_is_watched_again() {
    let dir = project("reload_app");
    let mw = Moonwire::start_watching(dir.path(), true);
    mw.wait_for("worker running version=1", DEADLINE);
    // A deploy that swaps the whole folder: the old one moves away, a new copy takes its place.
    let scripts = dir.path().join("scripts");
    let old = dir.path().join("scripts.old");
    std::fs::rename(&scripts, &old).unwrap();
    copy_dir(&old, &scripts);
    std::thread::sleep(Duration::from_millis(200));
    edit(
        &scripts.join("worker.lua"),
        "VERSION = 1",
        "VERSION = 2",
        save_by_rename,
    );
    mw.wait_for("worker running version=2", DEADLINE);
    // Edits to the moved-away folder are no longer the project's.
    edit(&old.join("lib.lua"), "lib-v1", "lib-old", save_by_rename);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(mw.addr(), "/lib"), (200, "lib-v1".into()));
}

#[test]
fn a_changed_dependency_restarts_its_dependents_stopping_them_first() {
    let dir = project("reload_deps");
    let mw = Moonwire::start_watching(dir.path(), false);
    mw.wait_for("consumer started query=ok", DEADLINE);
    edit(
        &dir.path().join("registry/_index.yaml"),
        "./data/first.db",
        "./data/second.db",
        save_by_rename,
    );
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "changed"), "app:consumer-service,app:db");
    assert_eq!(field(&line, "restarted"), "app:db,app:consumer-service");
    // The dependent stopped while what it requires was still there, and came back after it.
    mw.wait_for("consumer stopping query=", DEADLINE);
    assert_eq!(
        mw.count("consumer stopping query=ok"),
        1,
        "{}",
        mw.logs().join("\n")
    );
    nth_line(&mw, "consumer started query=ok", 2);
}

#[test]
fn removed_entries_stop_in_reverse_start_order() {
    let dir = project("reload_deps");
    let mw = Moonwire::start_watching(dir.path(), false);
    mw.wait_for("consumer started query=ok", DEADLINE);
    let index = dir.path().join("registry/_index.yaml");
    let text = std::fs::read_to_string(&index).unwrap();
    let start = text.find("  - name: db\n").unwrap();
    save_by_rename(&index, &text[..start]);
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(
        field(&line, "removed"),
        "app:consumer,app:consumer-service,app:db"
    );
    mw.wait_for("consumer stopping query=", DEADLINE);
    assert_eq!(
        mw.count("consumer stopping query=ok"),
        1,
        "{}",
        mw.logs().join("\n")
    );
}

#[test]
fn a_process_that_upgraded_to_another_entry_is_outdated_by_that_entry() {
    let dir = project("reload_outdated");
    let mw = Moonwire::start_watching(dir.path(), false);
    mw.wait_for("switcher on sw_b version=1 generation=1", DEADLINE);
    edit(
        &dir.path().join("registry/sw_b.lua"),
        "VERSION = 1",
        "VERSION = 2",
        save_by_rename,
    );
    let line = nth_line(&mw, "reload applied", 1);
    assert_eq!(field(&line, "changed"), "app:sw_b");
    let outdated = mw.wait_for("switcher outdated", DEADLINE);
    assert_eq!(field(&outdated, "sources"), "app:sw_b");
    mw.wait_for("switcher on sw_b version=2 generation=2", DEADLINE);
}

#[test]
fn a_server_that_cannot_bind_its_new_addr_retries() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let first = free.local_addr().unwrap();
    drop(free);
    let dir = project("reload_rebind");
    let mw = Moonwire::launch(
        dir.path(),
        true,
        &[],
        &[("RELOAD_ADDR", &first.to_string())],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second = taken.local_addr().unwrap();
    edit(
        &dir.path().join("registry/_index.yaml"),
        "\"${env:RELOAD_ADDR}\"",
        &format!("\"{second}\""),
        save_by_rename,
    );
    nth_line(&mw, "reload applied", 1);
    // Once the address is free again, the server gets there by itself (backoff ~1 s, 2 s).
    drop(taken);
    let line = nth_line(&mw, "listening", 2);
    assert_eq!(field(&line, "addr"), second.to_string());
    assert_eq!(get(second, "/version"), (200, "v1".into()));
}
