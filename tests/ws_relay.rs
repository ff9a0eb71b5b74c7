//! Issue 4 with a real WebSocket client against `tests/fixtures/ws_relay` (an echo target per
//! connection) and `tests/fixtures/ws_stall` (a 1 ms broadcaster, small outbound queues):
//! refused handshakes, token placements, relay payloads, heartbeats, ws.send/close/control,
//! leave and cleanup, target exit, terminate, oversized frames, origins, shutdown, and a stalled
//! client that must not slow a healthy one.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::{field, fixture_project, post_json, Moonwire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn start(fixture: &str) -> (tempfile::TempDir, Moonwire) {
    let dir = fixture_project(fixture);
    let mw = Moonwire::start(dir.path(), true);
    (dir, mw)
}

fn token(mw: &Moonwire) -> String {
    let r = post_json(mw.addr(), "/auth", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Ws, String> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            v.parse().expect("header value"),
        );
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("connect timed out")
    .map(|(ws, _)| ws)
    .map_err(|e| e.to_string())
}

/// A connection to `/ws/echo` with the token as a bearer header, plus its welcome frame.
async fn echo(mw: &Moonwire, t: &str, query: &str) -> (Ws, Value) {
    let url = format!("ws://{}/ws/echo?{query}", mw.addr());
    let mut ws = connect(&url, &[("Authorization", &format!("Bearer {t}"))])
        .await
        .unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

async fn next_msg(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no frame within 5s")
        .expect("stream ended")
        .expect("frame error")
}

/// The next text frame (pings/pongs skipped), parsed as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match next_msg(ws).await {
            Message::Text(t) => {
                return serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}"))
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn next_text(ws: &mut Ws) -> String {
    match next_msg(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_string().into()))
        .await
        .unwrap();
}

/// Reads until the server's close frame; returns its code and reason.
async fn expect_close(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no close within 5s")
        {
            Some(Ok(Message::Close(Some(f)))) => return (f.code, f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (CloseCode::Status, String::new()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("error instead of a close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// `GET /probe?pid=P`: whether the process is still alive.
fn alive(mw: &Moonwire, pid: &str) -> bool {
    let r = support::request(
        mw.addr(),
        "GET",
        &format!("/probe?pid={}", percent(pid)),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["alive"].as_bool().unwrap()
}

/// Waits for a log line containing every needle.
fn wait_line(mw: &Moonwire, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = mw
            .logs()
            .into_iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?}; log:\n{}",
            mw.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A hand-written upgrade request; returns status, lower-cased head and body.
fn raw_upgrade(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
    version: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    read_head_and_body(&mut s)
}

fn read_head_and_body(s: &mut TcpStream) -> (u16, String, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            panic!("connection closed: {:?}", String::from_utf8_lossy(&raw));
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes() {
    let (_dir, mw) = start("ws_relay");
    let addr = mw.addr();
    let t = token(&mw);
    let auth = format!("Bearer {t}");

    // No token / a forged token: the handler refuses, nothing upgrades.
    let (status, head, body) = raw_upgrade(addr, "/ws/echo", &[], "13");
    assert_eq!(status, 401, "{head}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "authentication required"})
    );
    let mut forged = t.clone();
    forged.replace_range(0..1, if t.starts_with('A') { "B" } else { "A" });
    let (status, _, _) = raw_upgrade(
        addr,
        "/ws/echo",
        &[("Authorization", &format!("Bearer {forged}"))],
        "13",
    );
    assert_eq!(status, 401);

    // The handler raises: 500 JSON, a log line naming the entry, no upgrade.
    let (status, _, body) = raw_upgrade(
        addr,
        "/ws/echo?mode=crash",
        &[("Authorization", &auth)],
        "13",
    );
    assert_eq!(status, 500);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("connect handler crashed"));
    let line = wait_line(&mw, &["connect handler crashed"]);
    assert!(line.contains("w:connect"), "{line}");

    // Bad relay JSON passes the response through, without the header.
    let (status, head, _) = raw_upgrade(
        addr,
        "/ws/echo?mode=badjson",
        &[("Authorization", &auth)],
        "13",
    );
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("x-ws-relay"), "{head}");
    // An unusable target is a 400.
    for mode in ["badpid", "nopid"] {
        let (status, _, body) = raw_upgrade(
            addr,
            &format!("/ws/echo?mode={mode}"),
            &[("Authorization", &auth)],
            "13",
        );
        assert_eq!(status, 400, "{mode}: {body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    }
    // The body was already written: no upgrade, the header is not leaked.
    let (status, head, body) = raw_upgrade(
        addr,
        "/ws/echo?mode=late",
        &[("Authorization", &auth)],
        "13",
    );
    assert_eq!((status, body.as_str()), (200, "body first"), "{head}");
    assert!(!head.contains("x-ws-relay"), "{head}");

    // A well-formed pid of a process that is gone: the socket opens and closes at once.
    let url = format!("ws://{addr}/ws/echo?mode=deadpid");
    let mut ws = connect(&url, &[("Authorization", &auth)]).await.unwrap();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Normal, "target process exited")
    );

    // Not a WebSocket request, or the wrong version.
    let r = support::request(addr, "GET", "/ws/echo", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let (status, head, _) = raw_upgrade(addr, "/ws/echo", &[("Authorization", &auth)], "8");
    assert_eq!(status, 426, "{head}");
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
    assert_eq!(
        mw.count("echo joined"),
        0,
        "a refused handshake notified a target"
    );
    assert_eq!(mw.count("panicked"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_placements_and_join_payload() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);
    let base = format!("ws://{}/ws/echo", mw.addr());
    let placements: Vec<(String, Vec<(&str, String)>)> = vec![
        (
            format!("{base}?tag=header"),
            vec![("Authorization", format!("Bearer {t}"))],
        ),
        (
            format!("{base}?tag=query&x-auth-token={}", percent(&t)),
            vec![],
        ),
        (
            format!("{base}?tag=cookie"),
            vec![("Cookie", format!("x-auth-token={t}"))],
        ),
    ];
    for (url, headers) in placements {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut ws = connect(&url, &headers)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let w = next_json(&mut ws).await;
        let tag = url.split("tag=").nth(1).unwrap().split('&').next().unwrap();
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["user"], "user:ws");
        assert_eq!(w["metadata"], json!({"user": "user:ws", "tag": tag}));
        // ws.join comes from the client pid, which is a pid.
        assert_eq!(w["from"], w["client_pid"]);
        assert!(w["client_pid"].as_str().unwrap().starts_with('{'), "{w}");
        assert_ne!(w["client_pid"], w["me"]);
        ws.close(None).await.unwrap();
    }
    let err = connect(&base, &[]).await.unwrap_err();
    assert!(err.contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_round_trip_and_outbound_shapes() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);
    let (mut ws, welcome) = echo(&mw, &t, "tag=frames").await;

    send(&mut ws, "hello").await;
    assert_eq!(next_text(&mut ws).await, "hello");
    let bytes = vec![0u8, 1, 2, 0xff, 0xfe, b'a'];
    ws.send(Message::Binary(bytes.clone().into()))
        .await
        .unwrap();
    match next_msg(&mut ws).await {
        Message::Binary(b) => assert_eq!(b.to_vec(), bytes),
        other => panic!("expected binary, got {other:?}"),
    }
    // ws.message payload: topic, type, sender and metadata.
    send(&mut ws, "info").await;
    let info = next_json(&mut ws).await;
    assert_eq!(info["topic"], "ws.message");
    assert_eq!(info["kind"], "text");
    assert_eq!(info["from"], welcome["client_pid"]);
    assert_eq!(info["client_pid"], welcome["client_pid"]);
    assert_eq!(
        info["metadata"],
        json!({"user": "user:ws", "tag": "frames"})
    );

    // Other topics are wrapped; ws.send strings are raw, non-string data becomes JSON.
    send(&mut ws, "wrap").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"topic": "custom.event", "data": {"a": 1, "s": "x"}})
    );
    assert_eq!(
        next_json(&mut ws).await,
        json!({"topic": "custom.str", "data": "hi"})
    );
    assert_eq!(
        next_json(&mut ws).await,
        json!({"topic": "custom.nil", "data": null})
    );
    // A payload string that is not UTF-8 is sent as base64.
    assert_eq!(
        next_json(&mut ws).await,
        json!({"topic": "custom.bin", "data": "//4="})
    );
    assert_eq!(next_text(&mut ws).await, "plain string");
    assert_eq!(next_json(&mut ws).await, json!({"x": 1}));

    // Ping/pong stays in the transport.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match next_msg(&mut ws).await {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected pong, got {other:?}"),
    }
    // A frame just under the 64 KiB limit goes through both ways.
    let big = "y".repeat(60 * 1024);
    send(&mut ws, &big).await;
    assert_eq!(next_text(&mut ws).await.len(), big.len());
    // The 64 KiB limit is for client frames; what the target sends may be larger.
    for n in [100_000, 300_000, 1_000_000] {
        send(&mut ws, &format!("big:{n}")).await;
        assert_eq!(next_text(&mut ws).await.len(), n);
    }
    // Many frames keep their order.
    for i in 0..200 {
        send(&mut ws, &format!("n{i}")).await;
    }
    for i in 0..200 {
        assert_eq!(next_text(&mut ws).await, format!("n{i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_control() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);

    // heartbeat_interval from X-WS-Relay.
    let (mut ws, welcome) = echo(&mw, &t, "tag=hb&hb=200ms").await;
    send(&mut ws, "one").await;
    send(&mut ws, "two").await;
    let start = Instant::now();
    let mut beats = Vec::new();
    while start.elapsed() < Duration::from_millis(1100) {
        let m = next_json_or_text(&mut ws).await;
        if let Some(v) = m {
            if v["type"] == "heartbeat" {
                beats.push(v);
            }
        }
    }
    assert!(
        (3..=7).contains(&beats.len()),
        "{} heartbeats in 1.1s at 200ms",
        beats.len()
    );
    let last = beats.last().unwrap();
    assert_eq!(last["message_count"], 2);
    assert_eq!(last["client_pid"], welcome["client_pid"]);
    assert_eq!(last["metadata"], json!({"user": "user:ws", "tag": "hb"}));
    assert!(!last["uptime"].as_str().unwrap().is_empty());
    ws.close(None).await.unwrap();

    // Default interval (30s): silent until ws.control sets one.
    let (mut ws, _) = echo(&mw, &t, "tag=ctl").await;
    assert!(tokio::time::timeout(Duration::from_millis(400), ws.next())
        .await
        .is_err());
    send(&mut ws, "hb").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "ack", "cmd": "hb"})
    );
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(700) {
        if let Some(v) = next_json_or_text(&mut ws).await {
            if v["type"] == "heartbeat" {
                n += 1;
            }
        }
    }
    assert!(n >= 3, "{n} heartbeats after ws.control set 150ms");

    // message_topic and metadata via ws.control; the ack follows the control through the
    // client's queue, so frames sent after it see the change.
    for cmd in ["topic", "meta"] {
        send(&mut ws, cmd).await;
        loop {
            let v = next_json(&mut ws).await;
            if v["type"] != "heartbeat" {
                assert_eq!(v, json!({"type": "ack", "cmd": cmd}));
                break;
            }
        }
    }
    send(&mut ws, "info").await;
    let info = loop {
        let v = next_json(&mut ws).await;
        if v["type"] == "info" {
            break v;
        }
    };
    assert_eq!(info["topic"], "custom.in");
    assert_eq!(info["metadata"], json!({"changed": true}));
    ws.close(None).await.unwrap();
}

/// The next frame as JSON, or `None` for a non-JSON text frame (echoes).
async fn next_json_or_text(ws: &mut Ws) -> Option<Value> {
    match next_msg(ws).await {
        Message::Text(t) => serde_json::from_str(&t).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_and_cleanup_leave_no_process_behind() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);
    let (mut ws, w) = echo(&mw, &t, "").await;
    let client = w["client_pid"].as_str().unwrap().to_string();
    let target = w["me"].as_str().unwrap().to_string();
    assert!(alive(&mw, &client) && alive(&mw, &target));

    ws.close(None).await.unwrap();
    // The server completes the closing handshake instead of dropping the TCP connection.
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) => {}
        other => panic!("no close reply: {other:?}"),
    }
    wait_line(&mw, &["echo left", &client, "client closed"]);
    // The client pid exits normally: a monitor sees no error and the documented value.
    let line = wait_line(&mw, &["client exit", &client]);
    assert!(line.contains("exit_error=none"), "{line}");
    assert!(line.contains("websocket connection closed"), "{line}");
    assert!(
        !alive(&mw, &client),
        "the client process outlived its socket"
    );
    assert!(!alive(&mw, &target), "the echo target did not exit");

    // Churn: every connection's process goes away.
    let mut pids = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..20 {
        let (ws, w) = echo(&mw, &t, "").await;
        pids.push(w["client_pid"].as_str().unwrap().to_string());
        conns.push(ws);
    }
    for (i, mut ws) in conns.into_iter().enumerate() {
        if i % 2 == 0 {
            ws.close(None).await.unwrap();
        } else {
            // Dropped without a close handshake.
            drop(ws);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while mw.count("client exit") < 21 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mw.count("client exit"), 21);
    for p in &pids {
        assert!(!alive(&mw, p), "{p} still alive");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_close_sends_1000_with_the_reason() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);
    for (cmd, reason) in [
        ("close:see you", "see you"),
        ("closetable", r#"{"why":"table"}"#),
        ("closedefault", "Connection closed by server"),
        // A close reason is at most 123 bytes on the wire: longer ones are cut, not fatal.
        (&*format!("close:{}", "é".repeat(100)), &*"é".repeat(61)),
    ] {
        let (mut ws, w) = echo(&mw, &t, "").await;
        send(&mut ws, cmd).await;
        assert_eq!(
            expect_close(&mut ws).await,
            (CloseCode::Normal, reason.to_string()),
            "{cmd}"
        );
        let client = w["client_pid"].as_str().unwrap();
        let line = wait_line(&mw, &["echo left", client]);
        assert!(line.contains("server closed"), "{line}");
        wait_line(&mw, &["client exit", client]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_exit_closes_the_socket() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);
    for cmd in ["quit", "crash"] {
        let (mut ws, w) = echo(&mw, &t, "").await;
        send(&mut ws, cmd).await;
        assert_eq!(
            expect_close(&mut ws).await,
            (CloseCode::Normal, "target process exited".to_string()),
            "{cmd}"
        );
        let client = w["client_pid"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&mw, &client) {
            assert!(
                Instant::now() < deadline,
                "{cmd}: client process left behind"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let line = wait_line(&mw, &["echo crashed on purpose"]);
    assert!(line.contains("w:echo"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_client_pid_closes_the_socket() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);
    let (mut ws, w) = echo(&mw, &t, "").await;
    send(&mut ws, "terminate").await;
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, CloseCode::Normal);
    let client = w["client_pid"].as_str().unwrap();
    let line = wait_line(&mw, &["client exit", client]);
    assert!(line.contains("websocket connection closed"), "{line}");
    wait_line(&mw, &["echo left", client, "server closed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retarget_moves_the_connection() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);
    let (mut ws, w) = echo(&mw, &t, "").await;
    let client = w["client_pid"].as_str().unwrap().to_string();
    send(&mut ws, "retarget").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "second-joined", "metadata": {"moved": true}})
    );
    wait_line(&mw, &["echo left", &client, "retargeted"]);
    send(&mut ws, "hello").await;
    assert_eq!(next_text(&mut ws).await, "second:hello");
    ws.close(None).await.unwrap();
    wait_line(&mw, &["second left", &client, "client closed"]);
    // The old target still monitored the client and saw it exit.
    wait_line(&mw, &["client exit", &client]);
    assert_eq!(
        mw.count("echo left"),
        1,
        "the old target got a second leave"
    );

    // A connection straight to a registered name.
    let (mut ws, w) = {
        let url = format!("ws://{}/ws/echo?mode=second", mw.addr());
        let mut ws = connect(&url, &[("Authorization", &format!("Bearer {t}"))])
            .await
            .unwrap();
        let w = next_json(&mut ws).await;
        (ws, w)
    };
    assert_eq!(w["type"], "second-joined");
    send(&mut ws, "x").await;
    assert_eq!(next_text(&mut ws).await, "second:x");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);
    let big_text = "z".repeat(64 * 1024 + 1);
    let big_bin = vec![7u8; 70 * 1024];
    for frame in [
        Message::Text(big_text.into()),
        Message::Binary(big_bin.into()),
    ] {
        let (mut ws, w) = echo(&mw, &t, "").await;
        ws.send(frame).await.unwrap();
        let (code, _) = expect_close(&mut ws).await;
        assert_eq!(code, CloseCode::Size);
        let client = w["client_pid"].as_str().unwrap();
        wait_line(&mw, &["echo left", client, "server closed"]);
        wait_line(&mw, &["client exit", client]);
    }
    assert_eq!(mw.count("panicked"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_rules() {
    let (_dir, mw) = start("ws_relay");
    let t = token(&mw);
    let addr = mw.addr();
    let auth = format!("Bearer {t}");
    let same = format!("http://{addr}");
    let cases: &[(&str, Option<&str>, bool)] = &[
        ("/ws/echo", None, true),
        ("/ws/echo", Some(&same), true),
        ("/ws/echo", Some("https://app.example.com"), true),
        ("/ws/echo", Some("https://x.trusted.example"), true),
        ("/ws/echo", Some("http://app.example.com"), false),
        (
            "/ws/echo",
            Some("https://app.example.com.evil.example"),
            false,
        ),
        ("/ws/echo", Some("https://trusted.example"), false),
        ("/ws/echo", Some("https://evil.example"), false),
        ("/any/echo", Some("https://evil.example"), true),
        ("/any/echo", None, true),
        ("/same/echo", None, true),
        ("/same/echo", Some(&same), true),
        ("/same/echo", Some("https://evil.example"), false),
    ];
    for (path, origin, ok) in cases {
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        let url = format!("ws://{addr}{path}");
        match connect(&url, &headers).await {
            Ok(mut ws) => {
                assert!(ok, "{path} accepted origin {origin:?}");
                assert_eq!(next_json(&mut ws).await["type"], "welcome");
                ws.close(None).await.unwrap();
            }
            Err(e) => {
                assert!(!ok, "{path} refused origin {origin:?}: {e}");
                assert!(e.contains("403"), "{e}");
            }
        }
    }
    let (status, _, body) = raw_upgrade(addr, "/any/echo", &[], "13");
    assert_eq!(status, 101, "{body}");
    let (status, _, body) = raw_upgrade(
        addr,
        "/same/echo",
        &[("Origin", "https://evil.example")],
        "13",
    );
    assert_eq!(status, 403);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_with_1001() {
    let (_dir, mut mw) = start("ws_relay");
    let t = token(&mw);
    let (mut ws, w) = echo(&mw, &t, "").await;
    let client = w["client_pid"].as_str().unwrap().to_string();
    let stopper = std::thread::spawn(move || {
        let begun = Instant::now();
        let status = mw.stop();
        (mw, status, begun.elapsed())
    });
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, CloseCode::Away);
    let (mw, status, took) = stopper.join().unwrap();
    assert!(status.success(), "{status:?} after {took:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let line = wait_line(&mw, &["echo left", &client]);
    assert!(line.contains("server closed"), "{line}");
}

/// The sequence number of a broadcaster frame.
fn seq(text: &str) -> u64 {
    let rest = text.strip_prefix("{\"seq\":").expect("broadcaster frame");
    rest[..rest.find(',').unwrap()].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_closed_without_slowing_a_healthy_one() {
    let (_dir, mw) = start("ws_stall");
    let addr = mw.addr();
    mw.wait_for("bcast ready", Duration::from_secs(10));
    let url = format!("ws://{addr}/ws/feed");
    let mut healthy = connect(&url, &[]).await.unwrap();

    // Counts frames for `secs` (or until `stop` holds) and checks the sequence has no gaps.
    let mut last: Option<u64> = None;
    let mut read_for = async |ws: &mut Ws, secs: f64, stop: &dyn Fn() -> bool| -> (u64, f64) {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            let text = next_text(ws).await;
            let s = seq(&text);
            if let Some(prev) = last {
                assert_eq!(s, prev + 1, "the healthy client lost frames");
            }
            last = Some(s);
            n += 1;
            if n.is_multiple_of(64) && stop() {
                break;
            }
        }
        (n, start.elapsed().as_secs_f64())
    };
    let (n0, t0) = read_for(&mut healthy, 1.0, &|| false).await;
    let rate0 = n0 as f64 / t0;
    assert!(
        rate0 > 200.0,
        "broadcaster too slow to test with: {rate0:.0}/s"
    );

    // The stalled client: a raw socket with a tiny receive buffer that never reads after the
    // handshake.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stalled = sock.connect(addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET /ws/feed HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stalled.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Joins are logged in order: the second one is the stalled client.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (healthy_pid, stalled_pid) = loop {
        let joins: Vec<String> = mw
            .logs()
            .iter()
            .filter(|l| l.contains("bcast joined"))
            .map(|l| field(l, "client_pid"))
            .collect();
        if joins.len() >= 2 {
            break (joins[0].clone(), joins[1].clone());
        }
        assert!(Instant::now() < deadline, "the stalled client never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The healthy client keeps its rate while the stalled one fills its queue and is closed.
    let closed = || mw.count("WebSocket client too slow") > 0;
    let (n1, t1) = read_for(&mut healthy, 10.0, &closed).await;
    assert!(
        closed(),
        "the stalled client was not closed within 10s; log:\n{}",
        mw.logs().join("\n")
    );
    let (n2, t2) = read_for(&mut healthy, 1.0, &|| false).await;
    let (rate1, rate2) = (n1 as f64 / t1, n2 as f64 / t2);
    assert!(
        rate1 > rate0 * 0.5,
        "healthy client slowed: {rate0:.0}/s → {rate1:.0}/s while the other stalled"
    );
    assert!(
        rate2 > rate0 * 0.5,
        "healthy client slowed: {rate0:.0}/s → {rate2:.0}/s after"
    );
    let line = wait_line(&mw, &["bcast left", &stalled_pid]);
    assert!(line.contains("too slow"), "{line}");
    assert_eq!(mw.count("WebSocket client too slow"), 1);
    assert!(
        !mw.logs()
            .iter()
            .any(|l| l.contains("bcast left") && l.contains(&healthy_pid)),
        "the healthy client was closed"
    );

    // The stalled socket really is closed: draining it reaches the end.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled socket was never closed");
    // The healthy client is still subscribed.
    let (n3, _) = read_for(&mut healthy, 0.3, &|| false).await;
    assert!(n3 > 0);
}
