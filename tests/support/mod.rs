//! Test harness: runs the real `moonwire` binary in a fresh project folder on an ephemeral
//! loopback port, collects its log lines, and speaks plain HTTP/1.1 to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A project folder holding a copy of the app (registry, scripts, public).
pub fn app_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["registry", "scripts", "public"] {
        copy_dir(&repo().join(sub), &dir.path().join(sub));
    }
    dir
}

/// A project folder with one fixture registry from `tests/fixtures/<name>` as `registry/`.
pub fn fixture_project(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &repo().join("tests/fixtures").join(name),
        &dir.path().join("registry"),
    );
    dir
}

pub struct Moonwire {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub addr: Option<SocketAddr>,
    pub dir: PathBuf,
}

impl Moonwire {
    /// Starts `moonwire run` in `dir` and waits until it listens (when `expect_http`).
    pub fn start(dir: &Path, expect_http: bool) -> Moonwire {
        Self::start_with(dir, expect_http, &[])
    }

    pub fn start_with(dir: &Path, expect_http: bool, env: &[(&str, &str)]) -> Moonwire {
        Self::launch(
            dir,
            expect_http,
            &["--no-watch", "--addr", "127.0.0.1:0"],
            env,
        )
    }

    /// Like [`Moonwire::start`] but with hot reload on (no `--no-watch`), on an ephemeral port.
    pub fn start_watching(dir: &Path, expect_http: bool) -> Moonwire {
        Self::launch(dir, expect_http, &["--addr", "127.0.0.1:0"], &[])
    }

    /// `moonwire run --registry registry` plus `args`, watching for changes unless `args` has
    /// `--no-watch`; without `--addr` every `http.service` binds its own `addr`. `addr` is then
    /// the first `listening` address.
    pub fn launch(dir: &Path, expect_http: bool, args: &[&str], env: &[(&str, &str)]) -> Moonwire {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moonwire"));
        cmd.args(["run", "--registry", "registry"])
            .args(args)
            .current_dir(dir)
            .env("MOONWIRE_LOG", "info")
            .env_remove("MOONWIRE_LOG_FORMAT")
            .env_remove("MOONWIRE_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start moonwire");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var("MOONWIRE_TEST_ECHO").is_ok() {
                    eprintln!("[moonwire] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut mw = Moonwire {
            child,
            lines,
            addr: None,
            dir: dir.to_path_buf(),
        };
        if expect_http {
            let line = mw.wait_for("listening", Duration::from_secs(20));
            mw.addr = Some(field(&line, "addr").parse().expect("listening addr"));
        }
        if !args.contains(&"--no-watch") {
            // Edits made before the watches exist would go unnoticed.
            mw.wait_for("watching for changes", Duration::from_secs(20));
        }
        mw
    }

    /// The OS pid of the running binary.
    pub fn os_pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("server address")
    }

    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` and returns it; panics with the log on timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line with {needle:?} within {timeout:?}; log:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The demo API key from the migration's log line.
    pub fn demo_key(&self) -> String {
        let line = self.wait_for("demo API key", Duration::from_secs(20));
        field(&line, "api_key")
    }

    /// SIGKILL: no shutdown of any kind (the crash case).
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the binary");
        self.child.wait().expect("reap the binary");
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Moonwire {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` from a log line (value up to the next space; quotes stripped).
pub fn field(line: &str, key: &str) -> String {
    let pat = format!("{key}=");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + pat.len();
    let rest = &line[start..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    rest.split([' ', '"'])
        .next()
        .unwrap_or_default()
        .to_string()
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[pos + 4 + size..];
    }
    out
}

pub fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> HttpResponse {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Exchanges the demo key for a token.
pub fn token(addr: SocketAddr, key: &str) -> String {
    let r = post_json(addr, "/auth/token", &serde_json::json!({ "api_key": key }));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

/// Runs a `moonwire` subcommand (`users`, `keys`, `tokens`…) in `dir`; returns (success, stdout, stderr).
pub fn cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moonwire"))
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A key made by `moonwire keys create`.
pub struct ApiKey {
    pub api_key: String,
    pub secret: String,
}

/// Creates a user with `password` (if new) and a key with `permissions` for it.
pub fn create_key(dir: &Path, email: &str, password: &str, permissions: &str) -> ApiKey {
    let (_, _, _) = cli(
        dir,
        &["users", "create", "--email", email, "--password", password],
        &[],
    );
    let (ok, out, err) = cli(
        dir,
        &[
            "keys",
            "create",
            "--user",
            email,
            "--permissions",
            permissions,
        ],
        &[],
    );
    assert!(ok, "keys create failed: {err}");
    let value = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    ApiKey {
        api_key: value("api_key:"),
        secret: value("secret:"),
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Hex HMAC-SHA256 over `METHOD\npath?query\ntimestamp\nbody`, computed here independently of
/// the server's code.
pub fn signature(secret: &str, method: &str, target: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{method}\n{target}\n{timestamp}\n").as_bytes());
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A request signed with `key` at `timestamp`.
pub fn signed_request(
    addr: SocketAddr,
    key: &ApiKey,
    method: &str,
    target: &str,
    body: &[u8],
    timestamp: i64,
) -> HttpResponse {
    let ts = timestamp.to_string();
    let sig = signature(&key.secret, method, target, &ts, body);
    request(
        addr,
        method,
        target,
        &[
            ("API-Key", &key.api_key),
            ("API-Timestamp", &ts),
            ("API-Signature", &sig),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

pub fn basic(email: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{email}:{password}"))
    )
}

/// Percent-encodes a token for a query string.
pub fn urlencode(t: &str) -> String {
    t.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
