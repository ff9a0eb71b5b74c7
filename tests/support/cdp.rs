//! Test-only helpers for driving headless Chromium over the Chrome DevTools Protocol (CDP),
//! plus child-process plumbing (log capture, kill-on-drop) shared by the browser test.
//!
//! Written against tokio-tungstenite directly so the tests need no extra crates, no npm and
//! no browser download: only a system Chromium.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single CDP command may take before the test gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each child's output kept for the failure report.
const LOG_TAIL: usize = 300;

// ---------------------------------------------------------------------------------------
// Child processes

/// Kills its child when dropped, so a failing (panicking) test never leaves a browser or a
/// server behind.
pub struct ChildGuard {
    child: Child,
    name: &'static str,
    /// Kill the whole process group too (Chromium forks zygote/renderer helpers).
    group: bool,
}

impl ChildGuard {
    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `grace` for a voluntary exit, then kills.
    pub fn finish(&mut self, grace: Duration) {
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if self.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    pub fn kill(&mut self) {
        if self.group {
            // The group may outlive its leader (helpers reparented to init), so signal it
            // even when the leader has already exited.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exited().is_none() {
            eprintln!(
                "[browser-test] stopping {} (pid {})",
                self.name,
                self.child.id()
            );
        }
        self.kill();
    }
}

/// The last lines a child printed, for failure reports.
#[derive(Clone, Default)]
pub struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == LOG_TAIL {
            q.pop_front();
        }
        q.push_back(line);
    }

    pub fn dump(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            return "    (no output)".into();
        }
        q.iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A started child whose stdout and stderr are read line by line on background threads.
/// The threads keep draining after the test stops listening: a full pipe would otherwise
/// block the child on its next log line.
pub struct Logged {
    pub guard: ChildGuard,
    pub lines: mpsc::Receiver<String>,
    pub tail: LogTail,
}

pub fn spawn_logged(mut cmd: Command, name: &'static str, group: bool) -> Result<Logged, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if group {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
    let (tx, rx) = mpsc::channel();
    let tail = LogTail::default();
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    pump(out, tx.clone(), tail.clone());
    pump(err, tx, tail.clone());
    Ok(Logged {
        guard: ChildGuard { child, name, group },
        lines: rx,
        tail,
    })
}

fn pump(src: impl Read + Send + 'static, tx: mpsc::Sender<String>, tail: LogTail) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(src);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_ansi(&String::from_utf8_lossy(&buf));
                    let line = line.trim_end().to_string();
                    tail.push(line.clone());
                    // The receiver is gone once setup is done; keep draining regardless.
                    let _ = tx.send(line);
                }
            }
        }
    });
}

/// Removes ANSI escape sequences: `tracing`'s text format colours field names, which would
/// split `api_key=` into `api_key` + escape codes + `=`.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Chromium

/// Finds a Chromium binary: `$CHROMIUM` if set, `/usr/bin/chromium`, then PATH.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let fixed = Path::new("/usr/bin/chromium");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A running headless Chromium. Field order matters: the process is killed before its
/// profile directory is removed.
pub struct Browser {
    pub proc: ChildGuard,
    pub ws_url: String,
    pub tail: LogTail,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn launch(binary: &Path, until: Instant) -> Result<Browser, String> {
        let profile = tempfile::tempdir().map_err(|e| format!("profile dir: {e}"))?;
        let mut cmd = Command::new(binary);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--password-store=basic",
            "--mute-audio",
            "--hide-scrollbars",
            "--window-size=1200,900",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank");
        let Logged { guard, lines, tail } = spawn_logged(cmd, "chromium", true)?;
        let mut browser = Browser {
            proc: guard,
            ws_url: String::new(),
            tail,
            _profile: profile,
        };
        let port_file = browser._profile.path().join("DevToolsActivePort");
        loop {
            let now = Instant::now();
            if now >= until {
                return Err(format!(
                    "chromium printed no `DevTools listening on ws://...` in time; its output:\n{}",
                    browser.tail.dump()
                ));
            }
            match lines.recv_timeout((until - now).min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(i) = line.find("DevTools listening on ws://") {
                        let url = line[i + "DevTools listening on ".len()..].trim();
                        browser.ws_url = url.to_string();
                        return Ok(browser);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // Fallback: the same endpoint is also written to the profile directory.
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut it = text.lines();
                if let (Some(port), Some(path)) = (it.next(), it.next()) {
                    if port.trim().parse::<u16>().is_ok() && path.starts_with('/') {
                        browser.ws_url = format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                        return Ok(browser);
                    }
                }
            }
            if let Some(status) = browser.proc.exited() {
                return Err(format!(
                    "chromium exited early ({status}); its output:\n{}",
                    browser.tail.dump()
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// CDP client

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One DevTools connection to the browser endpoint. Commands for a page go through a
/// flattened session (`sessionId` on each message), so one socket serves every target.
pub struct Cdp {
    sink: tokio::sync::Mutex<Sink>,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Cdp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Cdp {
    pub async fn connect(ws_url: &str) -> Result<Cdp, String> {
        let (ws, _) = tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(ws_url))
            .await
            .map_err(|_| format!("devtools connect to {ws_url} timed out"))?
            .map_err(|e| format!("devtools connect to {ws_url}: {e}"))?;
        let (sink, mut stream) = ws.split();
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (p, ev) = (pending.clone(), events.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    if let Some(tx) = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                        let _ = tx.send(v);
                    }
                } else if v.get("method").is_some() {
                    let mut evs = ev.lock().unwrap_or_else(|e| e.into_inner());
                    // Console chatter must not grow without bound over a long page run.
                    if evs.len() < 5000 {
                        evs.push(v);
                    }
                }
            }
            // Dropping the senders wakes every waiter with "connection closed".
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Ok(Cdp {
            sink: tokio::sync::Mutex::new(sink),
            pending,
            events,
            next_id: AtomicU64::new(1),
            reader,
        })
    }

    /// Sends one command and waits for its result (or its protocol error).
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s.to_string());
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let sent = self
            .sink
            .lock()
            .await
            .send(Message::Text(msg.to_string().into()))
            .await;
        if let Err(e) = sent {
            self.forget(id);
            return Err(format!("{method}: devtools send failed: {e}"));
        }
        let reply = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => return Err(format!("{method}: devtools connection closed")),
            Err(_) => {
                self.forget(id);
                return Err(format!("{method}: no reply within {CALL_TIMEOUT:?}"));
            }
        };
        if let Some(err) = reply.get("error") {
            return Err(format!("{method}: {err}"));
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Events received so far whose `method` matches.
    pub fn events(&self, method: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e["method"] == method)
            .cloned()
            .collect()
    }

    /// Opens a new tab on `url` and attaches to it with a flattened session.
    pub async fn new_page(&self, url: &str) -> Result<Page<'_>, String> {
        let created = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await?;
        let target = created["targetId"]
            .as_str()
            .ok_or("Target.createTarget returned no targetId")?
            .to_string();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or("Target.attachToTarget returned no sessionId")?
            .to_string();
        Ok(Page { cdp: self, session })
    }
}

/// A page target reached through its session.
pub struct Page<'a> {
    pub cdp: &'a Cdp,
    pub session: String,
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// Evaluates `expr` in the page and returns its JSON value (`null` for undefined). An
    /// exception in the page is an `Err` carrying its description.
    pub async fn eval(&self, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("unknown exception");
            return Err(format!("page threw: {what}"));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// A real left click at a viewport point (what a user's tap or click produces).
    pub async fn click_at(&self, x: f64, y: f64) -> Result<(), String> {
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            let mut p = json!({ "type": kind, "x": x, "y": y });
            if kind != "mouseMoved" {
                p["button"] = json!("left");
                p["clickCount"] = json!(1);
            }
            self.call("Input.dispatchMouseEvent", p).await?;
        }
        Ok(())
    }

    /// Types text into the focused element, as an IME commit would.
    pub async fn type_text(&self, text: &str) -> Result<(), String> {
        self.call("Input.insertText", json!({ "text": text }))
            .await
            .map(|_| ())
    }

    /// PNG bytes of the viewport.
    pub async fn screenshot_png(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let data = r["data"]
            .as_str()
            .ok_or("captureScreenshot returned no data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("screenshot base64: {e}"))
    }
}
