//! End-to-end browser test (mission acceptance 3–7): the real `moonwire` binary serves the
//! ticker app from `registry/` and `public/`, and headless Chromium, driven over the
//! DevTools protocol, pastes the demo API key, connects, and must see live prices, a live
//! chart per symbol, ping latency, and a reconnect (with a fresh token) after a restart.
//!
//! Without a Chromium binary the test is skipped with a note, except under `CI=true`, where
//! a missing browser is a failure: CI must never pass without having run it.

#[path = "support/cdp.rs"]
mod cdp;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cdp::{Browser, Cdp, Logged, Page};
use serde_json::{json, Value};

/// Budget for the page checks, counted from the start of the test; every wait is cut to it.
const CHECKS: Duration = Duration::from_secs(50);
/// Hard stop for the whole async part (a little above CHECKS so a timed-out check can still
/// report and take a failure screenshot). Keeps the test under a minute.
const OVERALL: Duration = Duration::from_secs(56);
/// The bound for the server to log its address and the demo key.
const SERVER_START: Duration = Duration::from_secs(30);
const SYMBOLS: usize = 3;

#[test]
fn ticker_page_streams_live_prices_in_headless_chromium() {
    let Some(chromium) = cdp::find_chromium() else {
        let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        if ci {
            panic!(
                "CI=true but no Chromium was found (looked at $CHROMIUM, /usr/bin/chromium, \
                 chromium and chromium-browser on PATH); install it (apt-get install chromium): \
                 the browser test must not be skipped in CI"
            );
        }
        eprintln!("SKIPPED browser test: no chromium binary found (set CHROMIUM=/path to use one)");
        return;
    };
    let start = Instant::now();
    let deadline = start + CHECKS;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));

    // The runtime treats its working directory as the project root: `directory: ./public`
    // and `./data/auth.db` resolve against it, and `file://` sources may not leave it. So
    // the server runs in a fresh directory holding a copy of the app (registry, scripts,
    // page), which also keeps the repo's own data/ untouched.
    let work = tempfile::tempdir().expect("temp dir");
    for dir in ["registry", "scripts", "public"] {
        copy_dir(&repo.join(dir), &work.path().join(dir))
            .unwrap_or_else(|e| panic!("copying {dir}/ into the test dir: {e}"));
    }
    std::fs::create_dir_all(work.path().join("data")).expect("create data/");
    let registry = work.path().join("registry");

    let mut server = match Server::start(&registry, work.path(), None, deadline) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    eprintln!(
        "[browser-test] moonwire on 127.0.0.1:{} after {:?}",
        server.port,
        start.elapsed()
    );

    let launch_by = deadline.min(Instant::now() + Duration::from_secs(20));
    let mut browser = match Browser::launch(&chromium, launch_by) {
        Ok(b) => b,
        Err(e) => panic!("{e}\n\nmoonwire output:\n{}", server.logged.tail.dump()),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = rt.block_on(async {
        let left = (start + OVERALL).saturating_duration_since(Instant::now());
        let run = drive(&browser, &mut server, &registry, work.path(), deadline);
        match tokio::time::timeout(left, run).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the browser test ran past its bound of {OVERALL:?}"
            )),
        }
    });
    // Browser.close was sent; give Chromium a moment to exit on its own before the guard
    // kills what is left. The server guard and the temp dirs go when they drop.
    browser.proc.finish(Duration::from_secs(3));
    if let Err(e) = outcome {
        panic!(
            "{e}\n\nmoonwire output (last lines):\n{}\n\nchromium output (last lines):\n{}",
            server.logged.tail.dump(),
            browser.tail.dump()
        );
    }
    eprintln!("[browser-test] passed in {:?}", start.elapsed());
}

/// Opens the page and runs the checks; on failure saves a screenshot next to the normal one.
/// Closes the browser either way.
async fn drive(
    browser: &Browser,
    server: &mut Server,
    registry: &Path,
    cwd: &Path,
    deadline: Instant,
) -> Result<(), String> {
    let cdp = Cdp::connect(&browser.ws_url).await?;
    let page = cdp.new_page("about:blank").await?;
    let result = checks(&cdp, &page, server, registry, cwd, deadline).await;
    let result = match result {
        Ok(()) => Ok(()),
        Err(e) => match save_screenshot(&page, "browser-test-failure.png").await {
            Ok(path) => Err(format!(
                "{e}\n(screenshot of the failure: {})",
                path.display()
            )),
            Err(_) => Err(e),
        },
    };
    // A graceful close lets Chromium reap its own helpers; the guard's kill is the fallback.
    let _ = cdp.call(None, "Browser.close", json!({})).await;
    result
}

async fn checks(
    cdp: &Cdp,
    page: &Page<'_>,
    server: &mut Server,
    registry: &Path,
    cwd: &Path,
    deadline: Instant,
) -> Result<(), String> {
    // Enabled before navigating so no exception of the page's start-up is missed.
    page.call("Page.enable", json!({})).await?;
    page.call("Runtime.enable", json!({})).await?;
    // A 2× device pixel ratio makes the HiDPI handling of the charts observable.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1200, "height": 900, "deviceScaleFactor": 2, "mobile": false }),
    )
    .await?;

    let url = format!("http://127.0.0.1:{}/", server.port);
    let nav = page.call("Page.navigate", json!({ "url": url })).await?;
    if let Some(err) = nav.get("errorText").and_then(Value::as_str) {
        return Err(format!("navigating to {url} failed: {err}"));
    }
    let ready = "document.readyState === 'complete' && typeof window.__ticker === 'object' \
                 && !!document.getElementById('api-key') && !!document.getElementById('connect')";
    wait_for(page, "the page to load", secs(10), deadline, ready, |v| {
        Ok(v == &json!(true))
    })
    .await?;

    // Nothing may come from outside this server (no CDN, no web fonts, no analytics).
    let foreign = page
        .eval(
            "performance.getEntriesByType('resource').map(e => e.name) \
             .filter(n => !n.startsWith(location.origin + '/') && !n.startsWith('data:'))",
        )
        .await?;
    if foreign.as_array().is_some_and(|a| !a.is_empty()) {
        return Err(format!(
            "the page loaded resources from elsewhere: {foreign}"
        ));
    }

    // A wrong key must stop with "invalid API key" (401 from /auth/token), not retry forever.
    type_key(page, "not-a-valid-key-0000000000000000").await?;
    click(page, "connect").await?;
    let snap = wait_for(
        page,
        "the error for a wrong key",
        secs(10),
        deadline,
        SNAPSHOT,
        |v| Ok(v["state"] == "error"),
    )
    .await?;
    let text = snap["statusText"].as_str().unwrap_or_default();
    if !text.contains("invalid API key") || snap["status"] != "error" {
        return Err(format!(
            "a wrong key should show `invalid API key` with data-state=error; got {snap}"
        ));
    }

    // The real key: typed as a user would, then a real click on Connect.
    type_key(page, &server.api_key).await?;
    click(page, "connect").await?;
    let live = wait_for(
        page,
        "live with 3 symbols",
        secs(15),
        deadline,
        SNAPSHOT,
        |v| {
            no_error(v)?;
            Ok(v["state"] == "live" && v["prices"].as_object().is_some_and(|p| p.len() >= SYMBOLS))
        },
    )
    .await?;
    if live["status"] != "live" {
        return Err(format!("#status data-state should be `live`: {live}"));
    }
    if live["userId"] != "user:demo" {
        return Err(format!("welcome should name user:demo: {live}"));
    }

    // Prices must move: compare against a snapshot taken ~1 s earlier.
    tokio::time::sleep(secs(1)).await;
    let before = page.eval(SNAPSHOT).await?;
    let moved = wait_for(
        page,
        "price changes, > 20 ticks",
        secs(10),
        deadline,
        SNAPSHOT,
        |v| {
            no_error(v)?;
            Ok(v["ticks"].as_u64().unwrap_or(0) > 20 && v["prices"] != before["prices"])
        },
    )
    .await?;
    check_table_and_charts(&moved)?;

    // Ping every 2 s; the round trip must be measured and shown.
    let pinged = wait_for(
        page,
        "a ping round trip",
        secs(6),
        deadline,
        SNAPSHOT,
        |v| {
            no_error(v)?;
            Ok(v["rtt"].is_number() && v["rttText"].as_str().is_some_and(|t| t.contains("ms")))
        },
    )
    .await?;
    eprintln!("[browser-test] live: {pinged}");

    check_canvases(page).await?;

    let remembered = page
        .eval(&format!(
            "Object.keys(localStorage).some(k => localStorage.getItem(k) === {})",
            json!(server.api_key)
        ))
        .await?;
    if remembered != json!(true) {
        return Err("the API key was not remembered in localStorage".into());
    }

    let shot = save_screenshot(page, "browser-test.png").await?;
    eprintln!("[browser-test] screenshot: {}", shot.display());

    // Restart the server on the same port. Tokens live in a memory store, so the page's
    // token dies with it: the page must back off, see the upgrade refused, fetch a fresh
    // token with the remembered key (which must survive in ./data/auth.db), and go live
    // again on its own.
    let tokens_before = page.eval("window.__ticker.tokens").await?.as_u64();
    let port = server.port;
    server.logged.guard.kill();
    wait_for(
        page,
        "the page to notice the restart",
        secs(10),
        deadline,
        SNAPSHOT,
        |v| Ok(v["state"] == "reconnecting" || v["state"] == "connecting"),
    )
    .await?;
    *server = Server::start(registry, cwd, Some(port), deadline)?;
    let back = wait_for(
        page,
        "live again after restart",
        secs(20),
        deadline,
        SNAPSHOT,
        |v| {
            no_error(v)?;
            Ok(v["state"] == "live" && v["reconnects"].as_u64().unwrap_or(0) > 0)
        },
    )
    .await?;
    // A runtime whose tokens survive a restart is fine too, so this is reported only.
    let fresh = back["tokens"].as_u64() > tokens_before;
    eprintln!("[browser-test] live again after restart (fresh token fetched: {fresh})");
    let ticks_back = back["ticks"].as_u64().unwrap_or(0);
    wait_for(
        page,
        "ticks after the reconnect",
        secs(5),
        deadline,
        SNAPSHOT,
        |v| Ok(v["ticks"].as_u64().unwrap_or(0) > ticks_back + 10),
    )
    .await?;

    // Disconnect stops the stream.
    click(page, "disconnect").await?;
    let idle = wait_for(
        page,
        "idle after Disconnect",
        secs(5),
        deadline,
        SNAPSHOT,
        |v| Ok(v["state"] == "idle"),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = page.eval(SNAPSHOT).await?;
    if after["ticks"].as_u64() > idle["ticks"].as_u64().map(|t| t + 1) {
        return Err(format!(
            "ticks kept arriving after Disconnect: {idle} → {after}"
        ));
    }

    let thrown = cdp.events("Runtime.exceptionThrown");
    if !thrown.is_empty() {
        let msgs: Vec<String> = thrown
            .iter()
            .map(|e| e["params"]["exceptionDetails"].to_string())
            .collect();
        return Err(format!(
            "uncaught exceptions in the page:\n{}",
            msgs.join("\n")
        ));
    }
    Ok(())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One expression reads everything the checks need (test hooks plus the DOM).
const SNAPSHOT: &str = "(() => { const t = window.__ticker || {}; \
    const q = (s) => [...document.querySelectorAll(s)]; \
    const st = document.getElementById('status'); \
    return { state: t.state, ticks: t.ticks, prices: t.prices, chartPoints: t.chartPoints, \
      rtt: t.rtt, error: t.error, tokens: t.tokens, reconnects: t.reconnects, \
      userId: t.userId, status: st && st.dataset.state, \
      statusText: st && st.textContent.trim(), \
      rttText: (document.getElementById('rtt') || {}).textContent, \
      rows: q('tr[data-symbol]').map(r => ({ symbol: r.dataset.symbol, text: r.textContent })), \
      canvases: q('canvas[data-symbol]').map(c => c.dataset.symbol) }; })()";

/// The page gave up (e.g. "invalid API key"): waiting longer cannot help.
fn no_error(v: &Value) -> Result<(), String> {
    if v["state"] == "error" {
        return Err(format!("the page stopped in the error state: {v}"));
    }
    Ok(())
}

fn check_table_and_charts(v: &Value) -> Result<(), String> {
    let prices = v["prices"].as_object().ok_or("no prices")?;
    for (symbol, price) in prices {
        if !price.as_f64().is_some_and(|p| p.is_finite() && p > 0.0) {
            return Err(format!("bad price for {symbol}: {price}"));
        }
        let row = v["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["symbol"] == symbol.as_str()))
            .ok_or_else(|| format!("no table row with data-symbol={symbol}: {v}"))?;
        if !row["text"].as_str().is_some_and(|t| t.contains('%')) {
            return Err(format!("row {symbol} shows no change in %: {row}"));
        }
        if !v["canvases"]
            .as_array()
            .is_some_and(|c| c.iter().any(|s| s == symbol.as_str()))
        {
            return Err(format!("no <canvas data-symbol={symbol}>: {v}"));
        }
        let points = v["chartPoints"][symbol].as_u64().unwrap_or(0);
        if !(2..=300).contains(&points) {
            return Err(format!(
                "chart {symbol} holds {points} points (want 2..=300): {v}"
            ));
        }
    }
    Ok(())
}

/// Every chart canvas must have drawn pixels, and its backing store must follow the CSS
/// size times devicePixelRatio (2 here), or lines come out blurry on phones.
async fn check_canvases(page: &Page<'_>) -> Result<(), String> {
    let r = page
        .eval(
            "[...document.querySelectorAll('canvas[data-symbol]')].map(c => { \
               const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
               let painted = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted++; \
               return { symbol: c.dataset.symbol, painted, w: c.width, h: c.height, \
                        cssW: c.clientWidth, cssH: c.clientHeight, dpr: devicePixelRatio }; })",
        )
        .await?;
    let list = r.as_array().ok_or("canvas check returned nothing")?;
    if list.len() < SYMBOLS {
        return Err(format!("expected {SYMBOLS} chart canvases: {r}"));
    }
    for c in list {
        if c["painted"].as_u64().unwrap_or(0) < 100 {
            return Err(format!("chart canvas is blank: {c}"));
        }
        let dpr = c["dpr"].as_f64().unwrap_or(1.0);
        let want = c["cssW"].as_f64().unwrap_or(0.0) * dpr;
        let got = c["w"].as_f64().unwrap_or(0.0);
        if want < 1.0 || (got - want).abs() > 2.0 {
            return Err(format!("canvas backing store is not HiDPI-sized: {c}"));
        }
    }
    Ok(())
}

async fn save_screenshot(page: &Page<'_>, name: &str) -> Result<PathBuf, String> {
    let png = page.screenshot_png().await?;
    let path = target_dir().join(name);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, &png).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Focuses the key input, clears it, and types `key` through the input pipeline.
async fn type_key(page: &Page<'_>, key: &str) -> Result<(), String> {
    page.eval(
        "(() => { const i = document.getElementById('api-key'); i.focus(); i.select(); \
          i.value = ''; i.dispatchEvent(new Event('input', { bubbles: true })); })()",
    )
    .await?;
    page.type_text(key).await?;
    let typed = page
        .eval("document.getElementById('api-key').value")
        .await?;
    if typed != json!(key) {
        return Err(format!("typing into the API key input gave {typed}"));
    }
    Ok(())
}

/// Clicks a button by id with real mouse events at its centre, after checking it is enabled.
async fn click(page: &Page<'_>, id: &str) -> Result<(), String> {
    let r = page
        .eval(&format!(
            "(() => {{ const b = document.getElementById({id}); if (!b) return null; \
               b.scrollIntoView({{ block: 'center' }}); const r = b.getBoundingClientRect(); \
               return {{ x: r.x + r.width / 2, y: r.y + r.height / 2, disabled: b.disabled }}; \
             }})()",
            id = json!(id)
        ))
        .await?;
    if r.is_null() {
        return Err(format!("no #{id} button"));
    }
    if r["disabled"] == true {
        return Err(format!("#{id} is disabled"));
    }
    let x = r["x"].as_f64().unwrap_or(0.0);
    let y = r["y"].as_f64().unwrap_or(0.0);
    page.click_at(x, y).await
}

/// Polls `expr` every 100 ms until `ok` says done (`Ok(true)`) or gives up (`Err`); bounded
/// by `limit` and the overall deadline. Evaluation errors count as "not yet" (the page may
/// be navigating) and are shown if time runs out.
async fn wait_for(
    page: &Page<'_>,
    what: &str,
    limit: Duration,
    deadline: Instant,
    expr: &str,
    ok: impl Fn(&Value) -> Result<bool, String>,
) -> Result<Value, String> {
    let until = deadline.min(Instant::now() + limit);
    loop {
        let last = match page.eval(expr).await {
            Ok(v) => match ok(&v) {
                Ok(true) => return Ok(v),
                Ok(false) => v,
                Err(e) => return Err(format!("while waiting for {what}: {e}")),
            },
            Err(e) => json!({ "error": e }),
        };
        if Instant::now() >= until {
            return Err(format!(
                "timed out after {limit:?} waiting for {what}; last seen: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running `moonwire run` and what it logged at start-up.
struct Server {
    port: u16,
    api_key: String,
    logged: Logged,
}

impl Server {
    /// Starts the binary and waits (ANSI colours stripped) for a line containing `listening`
    /// and `127.0.0.1:<port>`, and, on the first start (`port` is `None`), a line containing
    /// `demo API key created` (or `demo API key exists`) and `api_key=<key>`. On a restart
    /// the key is not required in the log: the page reusing it proves it persisted, and a
    /// runtime may rightly avoid logging the secret twice.
    fn start(
        registry: &Path,
        cwd: &Path,
        port: Option<u16>,
        deadline: Instant,
    ) -> Result<Server, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moonwire"));
        cmd.args(["run", "--registry"])
            .arg(registry)
            .arg("--no-watch")
            .current_dir(cwd)
            .env("MOONWIRE_ADDR", format!("127.0.0.1:{}", port.unwrap_or(0)))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let mut logged = cdp::spawn_logged(cmd, "moonwire", false)?;
        let need_key = port.is_none();
        let until = deadline.min(Instant::now() + SERVER_START);
        let mut found_port = None;
        let mut key = None;
        loop {
            if let Some(port) = found_port {
                if key.is_some() || !need_key {
                    let api_key = key.unwrap_or_default();
                    return Ok(Server {
                        port,
                        api_key,
                        logged,
                    });
                }
            }
            let now = Instant::now();
            if now >= until {
                return Err(format!(
                    "moonwire did not log `listening ... addr=127.0.0.1:PORT` ({}){} within \
                     {SERVER_START:?}; its output:\n{}",
                    if found_port.is_some() {
                        "seen"
                    } else {
                        "missing"
                    },
                    if need_key {
                        format!(
                            " and `demo API key created api_key=KEY` ({})",
                            if key.is_some() { "seen" } else { "missing" }
                        )
                    } else {
                        String::new()
                    },
                    logged.tail.dump()
                ));
            }
            match logged
                .lines
                .recv_timeout((until - now).min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    if found_port.is_none() && line.contains("listening") {
                        found_port = parse_port(&line);
                        if found_port == Some(0) {
                            return Err(format!(
                                "moonwire logged port 0, not the port it bound: {line}"
                            ));
                        }
                    }
                    if key.is_none() {
                        key = parse_key(&line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = logged.guard.exited();
                    return Err(format!(
                        "moonwire closed its output before start-up finished (exit: {status:?}); \
                         its output:\n{}",
                        logged.tail.dump()
                    ));
                }
            }
            if let Some(status) = logged.guard.exited() {
                // Let the reader threads hand the last lines to the tail before reporting.
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "moonwire exited during start-up ({status}); its output:\n{}",
                    logged.tail.dump()
                ));
            }
        }
    }
}

/// `... listening addr=127.0.0.1:43121 ...` → 43121.
fn parse_port(line: &str) -> Option<u16> {
    let at = line.find("127.0.0.1:")? + "127.0.0.1:".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `... demo API key created api_key=AbC... ` (text) or `"api_key":"AbC..."` (JSON) → the key.
fn parse_key(line: &str) -> Option<String> {
    if !(line.contains("demo API key created") || line.contains("demo API key exists")) {
        return None;
    }
    let at = line.find("api_key")? + "api_key".len();
    let rest = line[at..].trim_start_matches(['"', '=', ':', ' ']);
    let key: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | ',' | '}'))
        .collect();
    (!key.is_empty()).then_some(key)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

#[test]
fn log_line_parsing() {
    let listen = "2025-01-01T00:00:00Z  INFO moonwire::http: listening addr=127.0.0.1:43121 id=x";
    assert_eq!(parse_port(listen), Some(43121));
    assert_eq!(parse_port("listening addr=\"127.0.0.1:8081\""), Some(8081));
    let key = "INFO migrate: demo API key created api_key=\"Ab3dEf6hIj9lMn0pQr1tUv2xYz4B5c6D\"";
    assert_eq!(
        parse_key(key).as_deref(),
        Some("Ab3dEf6hIj9lMn0pQr1tUv2xYz4B5c6D")
    );
    assert_eq!(
        parse_key("INFO demo API key exists api_key=k3y0123 pid=1").as_deref(),
        Some("k3y0123")
    );
    assert_eq!(
        parse_key(r#"{"fields":{"message":"demo API key created","api_key":"xyz789"}}"#).as_deref(),
        Some("xyz789")
    );
    assert_eq!(parse_key("api_key=abc but another message"), None);
    let coloured = "\u{1b}[3mapi_key\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"k\"";
    assert_eq!(cdp::strip_ansi(coloured), "api_key=\"k\"");
}
