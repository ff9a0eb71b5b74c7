//! `websocket_relay` (§8.3): upgrades a request whose handler set `X-WS-Relay`, runs the client
//! connection as a process with its own pid, and relays frames and lifecycle messages between
//! the socket and the target process. Each connection's outbound queue is its bounded mailbox:
//! a client that cannot keep up is closed with 1013 instead of slowing anyone else.

use crate::http::router::WsRelayOptions;
use crate::http::server::{error_response, Body, ServerState};
use crate::http::ws_outlet::{encode_data_frame, Outlet};
use crate::metrics::{self, METRICS};
use crate::process::mailbox::Mailbox;
use crate::process::pid::{Event, ExitResult, Message, Pid, Signal};
use crate::process::value::Value;
use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{HeaderMap, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

pub const MAX_FRAME: usize = 64 * 1024;
/// Capacity of a connection's read buffer, kept by every connection while it idles. Clients send
/// small frames (pings, commands); a larger frame still arrives, the buffer grows for it.
const READ_BUFFER: usize = 256;
const PING_INTERVAL: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Budget for a close frame to a client that may have stopped reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a blocked write looks at the client's queue for an overflow.
const STALL_CHECK: Duration = Duration::from_millis(10);

pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    };
    has(UPGRADE, "websocket") && has(CONNECTION, "upgrade")
}

pub enum Outcome {
    Upgrade(Response<Body>),
    Reject(Response<Body>),
    PassThrough,
}

#[derive(Clone)]
struct Plan {
    target: Pid,
    message_topic: Arc<str>,
    heartbeat: Duration,
    metadata: Value,
}

fn parse_plan(state: &ServerState, header: &str) -> Result<Plan, Box<Outcome>> {
    let json: serde_json::Value = match serde_json::from_str(header) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, "X-WS-Relay is not valid JSON; answering without upgrade");
            return Err(Box::new(Outcome::PassThrough));
        }
    };
    let target = json
        .get("target_pid")
        .and_then(|v| v.as_str())
        .and_then(|s| state.node.procs.resolve(s));
    let Some(target) = target else {
        return Err(Box::new(Outcome::Reject(error_response(
            StatusCode::BAD_REQUEST,
            "invalid relay target",
        ))));
    };
    let heartbeat = json
        .get("heartbeat_interval")
        .and_then(|v| v.as_str())
        .and_then(|s| crate::registry::duration::parse(s).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(30));
    Ok(Plan {
        target,
        message_topic: Arc::from(
            json.get("message_topic")
                .and_then(|v| v.as_str())
                .unwrap_or("ws.message"),
        ),
        heartbeat,
        metadata: json
            .get("metadata")
            .map(Value::from_json)
            .unwrap_or_else(|| Value::table(vec![], vec![])),
    })
}

fn origin_allowed(opts: &WsRelayOptions, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split("://").nth(1).unwrap_or(origin);
    if origin_host.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(patterns) = &opts.allowed_origins else {
        return false;
    };
    patterns.iter().any(|p| {
        if p == "*" {
            true
        } else if p.contains("://") {
            p.eq_ignore_ascii_case(origin)
        } else {
            crate::lua::modules::process::glob(
                &p.to_ascii_lowercase(),
                &origin_host.to_ascii_lowercase(),
            )
        }
    })
}

/// Decides the handshake and, on success, starts the connection once hyper hands the socket over.
pub fn accept(
    state: &Arc<ServerState>,
    opts: &WsRelayOptions,
    parts: &hyper::http::request::Parts,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    header: &str,
) -> Outcome {
    let plan = match parse_plan(state, header) {
        Ok(p) => p,
        Err(outcome) => return *outcome,
    };
    if !origin_allowed(opts, &parts.headers) {
        return Outcome::Reject(error_response(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    let (Some(on_upgrade), Some(key)) = (on_upgrade, parts.headers.get(SEC_WEBSOCKET_KEY)) else {
        return Outcome::Reject(error_response(
            StatusCode::BAD_REQUEST,
            "not a WebSocket handshake",
        ));
    };
    if parts
        .headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut r = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version",
        );
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return Outcome::Reject(r);
    }
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let state = state.clone();
    let slot = state.connections.hand_over();
    tokio::task::spawn_local(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .read_buffer_size(READ_BUFFER)
                    .write_buffer_size(0)
                    // tungstenite writes control frames only (data frames go through the
                    // outlet in batches), and the outlet accepts each write whole.
                    .max_write_buffer_size(usize::MAX)
                    .max_message_size(Some(MAX_FRAME))
                    .max_frame_size(Some(MAX_FRAME));
                let ws = WebSocketStream::from_raw_socket(
                    Outlet::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(config),
                )
                .await;
                run_connection(state, ws, plan).await;
            }
            Err(e) => tracing::warn!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept_key) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    Outcome::Upgrade(resp)
}

fn lifecycle(pid: &Pid, plan: &Plan, extra: Vec<(&'static str, Value)>) -> Value {
    let mut fields = vec![
        ("client_pid", Value::str(pid.to_string())),
        ("metadata", plan.metadata.clone()),
    ];
    fields.extend(extra);
    Value::record(fields)
}

fn tell(state: &ServerState, from: &Pid, to: &Pid, topic: &str, payload: Value) {
    state.node.procs.send(
        to,
        Message {
            from: Some(from.clone()),
            topic: Arc::from(topic),
            payloads: vec![payload],
        },
    );
}

/// A close frame's payload is at most 125 bytes (2 for the code): a longer reason would be a
/// protocol error for the client, so it is cut at a character boundary.
const MAX_CLOSE_REASON: usize = 123;

fn close_frame(code: CloseCode, reason: &str) -> WsMessage {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason[..end].to_string()),
    }))
}

/// A data frame for the client; only these are batched (control frames go through tungstenite).
enum DataFrame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// What a message sent to the client pid turns into.
enum Outbound {
    Frame(DataFrame),
    Close(String),
    Control(Value),
}

fn outbound(msg: Message) -> Outbound {
    let payload = msg.payloads.into_iter().next().unwrap_or(Value::Nil);
    match &*msg.topic {
        "ws.send" => Outbound::Frame(raw_frame(payload)),
        "ws.close" => Outbound::Close(match &payload {
            Value::Nil => "Connection closed by server".to_string(),
            Value::Str(_) => payload.as_str().unwrap_or_default().to_string(),
            other => other.to_json().to_string(),
        }),
        "ws.control" => Outbound::Control(payload),
        topic => {
            let body = serde_json::json!({ "topic": topic, "data": payload.to_json() });
            Outbound::Frame(DataFrame::Text(Utf8Bytes::from(body.to_string())))
        }
    }
}

/// `ws.send`: a string payload or `{type, data}` becomes one frame, bytes shared not copied.
fn raw_frame(payload: Value) -> DataFrame {
    let (binary, data) = match &payload {
        Value::Table(_) => (
            payload.get("type").and_then(Value::as_str) == Some("binary"),
            payload.get("data").cloned().unwrap_or(Value::Nil),
        ),
        _ => (false, payload),
    };
    match data {
        Value::Str(bytes) if binary => DataFrame::Binary(bytes),
        Value::Str(bytes) => match shared_text(bytes) {
            Ok(text) => DataFrame::Text(text),
            Err(bytes) => DataFrame::Binary(bytes),
        },
        other => DataFrame::Text(Utf8Bytes::from(other.to_json().to_string())),
    }
}

thread_local! {
    /// Where a batch of frames is encoded before it is written: one buffer per worker thread,
    /// so an idle connection holds none.
    static BATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A worker's batch buffer keeps its allocation only up to this size.
const BATCH_KEEP_CAPACITY: usize = 256 * 1024;

/// Encodes `frames` into the worker's batch buffer, empties `frames`, and hands the bytes to
/// `write`.
fn encode_batch<R>(frames: &mut Vec<DataFrame>, write: impl FnOnce(&[u8]) -> R) -> R {
    BATCH.with_borrow_mut(|buf| {
        buf.clear();
        for frame in frames.drain(..) {
            match &frame {
                DataFrame::Text(t) => encode_data_frame(buf, 1, t.as_bytes()),
                DataFrame::Binary(b) => encode_data_frame(buf, 2, b),
            }
        }
        let result = write(buf);
        if buf.capacity() > BATCH_KEEP_CAPACITY {
            *buf = Vec::new();
        }
        result
    })
}

thread_local! {
    /// The last broadcast buffer validated as UTF-8 on this worker. A ticker sends one shared
    /// `Bytes` to every client, so one check serves them all; holding the clone keeps the
    /// buffer alive, so an equal pointer and length mean the same bytes.
    static LAST_TEXT: std::cell::RefCell<Option<Utf8Bytes>> = const { std::cell::RefCell::new(None) };
}

fn shared_text(bytes: Bytes) -> Result<Utf8Bytes, Bytes> {
    LAST_TEXT.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(text) = last.as_ref() {
            let held: &[u8] = text.as_ref();
            if held.as_ptr() == bytes.as_ptr() && held.len() == bytes.len() {
                return Ok(text.clone());
            }
        }
        let text = Utf8Bytes::try_from(bytes.clone()).map_err(|_| bytes)?;
        if text.len() >= 64 {
            *last = Some(text.clone());
        }
        Ok(text)
    })
}

async fn run_connection<S>(
    state: Arc<ServerState>,
    mut ws: WebSocketStream<Outlet<S>>,
    mut plan: Plan,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let procs = state.node.procs.clone();
    let proc = procs.register_with(
        state.pid_label,
        Arc::from("websocket"),
        Mailbox::bounded(state.ws_buffer),
    );
    let pid = proc.pid.clone();
    metrics::ws_opened();
    procs.monitor(&pid, &plan.target);
    tell(
        &state,
        &pid,
        &plan.target,
        "ws.join",
        lifecycle(&pid, &plan, vec![]),
    );

    let started = Instant::now();
    let mut frames_in: i64 = 0;
    // One timer for both the heartbeat and the keepalive ping, and one shutdown future, kept
    // across iterations: a connection wakes once per outbound message, and re-creating timers
    // and futures on every wake-up was a measurable share of fan-out cost.
    let mut heartbeat_due = tokio::time::Instant::now() + plan.heartbeat;
    let mut ping_due = tokio::time::Instant::now() + PING_INTERVAL;
    let timer = tokio::time::sleep_until(heartbeat_due.min(ping_due));
    tokio::pin!(timer);
    let idle_limit = state.idle_timeout.unwrap_or(PING_INTERVAL * 3);
    let mut last_seen = Instant::now();
    let mut shutdown = state.shutdown.clone();
    let shutdown_changed = shutdown.changed();
    tokio::pin!(shutdown_changed);
    let mut batch: Vec<Signal> = Vec::new();
    let mut frames: Vec<DataFrame> = Vec::new();
    let read_gate = crate::http::ws_read_gate::ReadGate::default();

    let reason: String = 'conn: loop {
        tokio::select! {
            frame = poll_fn(|cx| read_gate.poll_next(&mut ws, cx)) => {
                last_seen = Instant::now();
                match frame {
                    Some(Ok(WsMessage::Text(t))) => {
                        frames_in += 1;
                        METRICS.ws_frames_in.inc();
                        let data = Value::Str(Bytes::from(t));
                        let topic = plan.message_topic.clone();
                        tell(&state, &pid, &plan.target, &topic,
                            lifecycle(&pid, &plan, vec![("type", Value::str("text")), ("data", data)]));
                    }
                    Some(Ok(WsMessage::Binary(b))) => {
                        frames_in += 1;
                        METRICS.ws_frames_in.inc();
                        let topic = plan.message_topic.clone();
                        tell(&state, &pid, &plan.target, &topic,
                            lifecycle(&pid, &plan, vec![("type", Value::str("binary")), ("data", Value::Str(b))]));
                    }
                    Some(Ok(WsMessage::Close(_))) => {
                        // tungstenite queued the close reply; send it, or the client sees an
                        // abnormal closure (1006) instead of completing the closing handshake.
                        let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, ws.flush())).await;
                        break 'conn "client closed".to_string();
                    }
                    None => break 'conn "client closed".to_string(),
                    Some(Ok(_)) => {}
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        // A client that sent an oversized frame may not read either: bounded.
                        let _ = send_within(&mut ws, CLOSE_TIMEOUT, close_frame(CloseCode::Size, "frame too large")).await;
                        break 'conn format!("server closed: {e}");
                    }
                    Some(Err(e)) => break 'conn format!("client closed: {e}"),
                }
            }
            _ = poll_fn(|cx| if proc.mailbox.register(cx.waker()) { Poll::Pending } else { Poll::Ready(()) }) => {
                if let Some(r) = proc.mailbox.kill_reason() {
                    let _ = send_within(&mut ws, CLOSE_TIMEOUT, close_frame(CloseCode::Normal, "terminated")).await;
                    break 'conn format!("server closed: {r}");
                }
                if proc.mailbox.overflowed() {
                    METRICS.ws_slow_client_drops.inc();
                    tracing::warn!(client_pid = %pid, queue = state.ws_buffer, "WebSocket client too slow; closing with 1013");
                    // The socket is likely full, so the close frame gets a short budget only.
                    let _ = send_within(&mut ws, CLOSE_TIMEOUT, close_frame(CloseCode::Again, "client too slow")).await;
                    break 'conn "server closed: client too slow".to_string();
                }
                proc.mailbox.drain(&mut batch);
                let mut closing: Option<String> = None;
                for signal in batch.drain(..) {
                    match signal {
                        Signal::Message(m) => match outbound(m) {
                            Outbound::Frame(f) => {
                                if closing.is_none() {
                                    frames.push(f);
                                }
                            }
                            Outbound::Close(r) => {
                                closing.get_or_insert(r);
                            }
                            Outbound::Control(c) => {
                                apply_control(&state, &pid, &mut plan, &mut heartbeat_due, c);
                                timer.as_mut().reset(heartbeat_due.min(ping_due));
                            }
                        },
                        Signal::Event(Event::Exit { from, .. }) if from == plan.target => {
                            closing.get_or_insert_with(|| "target process exited".to_string());
                        }
                        // A linked process failed: the connection goes down with it (§3.4).
                        Signal::Event(Event::LinkDown { error, .. }) => {
                            closing.get_or_insert_with(|| format!("linked process failed: {error}"));
                        }
                        Signal::Event(_) => {}
                    }
                }
                let fed = frames.len() as u64;
                // The whole batch is one buffer and, when the socket has room, one write.
                // A client that stops reading blocks the write until the socket takes it all.
                // Meanwhile its queue keeps filling: watch for the overflow so it is closed
                // with 1013 at once instead of after WRITE_TIMEOUT, or never.
                let written = {
                    let mut staged = false;
                    let write = poll_fn(|cx| {
                        let outlet = ws.get_mut();
                        if !staged {
                            staged = true;
                            let sent = encode_batch(&mut frames, |bytes| outlet.poll_send(cx, bytes));
                            if sent.is_ready() {
                                return sent;
                            }
                        }
                        outlet.poll_drain(cx)
                    });
                    // Most writes finish at once (the socket has room): no timers for those.
                    let mut write = std::pin::pin!(write);
                    match poll_fn(|cx| Poll::Ready(std::future::Future::poll(write.as_mut(), cx))).await {
                        Poll::Ready(r) => Some(Ok(r)),
                        // Boxed: the timers of a blocked write would otherwise be part of every
                        // connection's task, most of which never block.
                        Poll::Pending => Box::pin(async {
                            let overflow = async {
                                loop {
                                    tokio::time::sleep(STALL_CHECK).await;
                                    if proc.mailbox.overflowed() {
                                        break;
                                    }
                                }
                            };
                            tokio::select! {
                                biased;
                                r = tokio::time::timeout(WRITE_TIMEOUT, write) => Some(r),
                                () = overflow => None,
                            }
                        })
                        .await,
                    }
                };
                match written {
                    Some(Ok(Ok(()))) => METRICS.ws_frames_out.inc_by(fed),
                    Some(Ok(Err(e))) => break 'conn format!("client closed: {e}"),
                    Some(Err(_)) => {
                        METRICS.ws_slow_client_drops.inc();
                        tracing::warn!(client_pid = %pid, "WebSocket write stalled; closing");
                        break 'conn "server closed: write timeout".to_string();
                    }
                    // The overflow check at the top of this arm closes it with 1013.
                    None => continue 'conn,
                };
                if let Some(r) = closing {
                    let target_exited = r == "target process exited";
                    let _ = send_within(&mut ws, WRITE_TIMEOUT, close_frame(CloseCode::Normal, &r)).await;
                    break 'conn if target_exited { r } else { format!("server closed: {r}") };
                }
            }
            () = &mut timer => {
                let now = tokio::time::Instant::now();
                if now >= heartbeat_due {
                    heartbeat_due = now + plan.heartbeat;
                    let uptime = crate::registry::duration::format(started.elapsed());
                    tell(&state, &pid, &plan.target, "ws.heartbeat",
                        lifecycle(&pid, &plan, vec![("uptime", Value::str(uptime)), ("message_count", Value::Int(frames_in))]));
                }
                if now >= ping_due {
                    ping_due = now + PING_INTERVAL;
                    if last_seen.elapsed() > idle_limit {
                        let _ = send_within(&mut ws, WRITE_TIMEOUT, close_frame(CloseCode::Away, "idle timeout")).await;
                        break 'conn "server closed: idle timeout".to_string();
                    }
                    if send_within(&mut ws, WRITE_TIMEOUT, WsMessage::Ping(Bytes::new())).await.is_err() {
                        break 'conn "server closed: write timeout".to_string();
                    }
                }
                timer.as_mut().reset(heartbeat_due.min(ping_due));
            }
            _ = &mut shutdown_changed => {
                let _ = send_within(&mut ws, Duration::from_secs(1), close_frame(CloseCode::Away, "server shutting down")).await;
                break 'conn "server closed: shutdown".to_string();
            }
        }
    };
    tell(
        &state,
        &pid,
        &plan.target,
        "ws.leave",
        lifecycle(&pid, &plan, vec![("reason", Value::str(reason))]),
    );
    procs.demonitor(&pid, &plan.target);
    metrics::ws_closed();
    procs.exit(
        &pid,
        ExitResult::Value(Value::str("websocket connection closed")),
    );
}

/// What `send_within` resolves to: the send's own result, or the limit ran out.
type TimedSend = Result<Result<(), tungstenite::Error>, tokio::time::error::Elapsed>;

/// `ws.send(message)` within `limit`, boxed: the close and keepalive sends are rare, and their
/// futures (a timer each) would otherwise be part of every connection's task.
fn send_within<'a, S>(
    ws: &'a mut WebSocketStream<S>,
    limit: Duration,
    message: WsMessage,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = TimedSend> + 'a>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'a,
{
    Box::pin(tokio::time::timeout(limit, ws.send(message)))
}

fn apply_control(
    state: &ServerState,
    pid: &Pid,
    plan: &mut Plan,
    heartbeat_due: &mut tokio::time::Instant,
    control: Value,
) {
    if let Some(meta) = control.get("metadata") {
        plan.metadata = meta.clone();
    }
    if let Some(topic) = control.get("message_topic").and_then(Value::as_str) {
        plan.message_topic = Arc::from(topic);
    }
    if let Some(d) = control
        .get("heartbeat_interval")
        .and_then(Value::as_str)
        .and_then(|s| crate::registry::duration::parse(s).ok())
        .filter(|d| !d.is_zero())
    {
        plan.heartbeat = d;
        *heartbeat_due = tokio::time::Instant::now() + d;
    }
    if let Some(target) = control
        .get("target_pid")
        .and_then(Value::as_str)
        .and_then(|s| state.node.procs.resolve(s))
    {
        let procs = &state.node.procs;
        tell(
            state,
            pid,
            &plan.target,
            "ws.leave",
            lifecycle(pid, plan, vec![("reason", Value::str("retargeted"))]),
        );
        procs.demonitor(pid, &plan.target);
        plan.target = target;
        procs.monitor(pid, &plan.target);
        tell(
            state,
            pid,
            &plan.target,
            "ws.join",
            lifecycle(pid, plan, vec![]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_send_payloads_become_raw_frames() {
        let t = Value::record([
            ("type", Value::str("text")),
            ("data", Value::str("{\"a\":1}")),
        ]);
        assert!(matches!(raw_frame(t), DataFrame::Text(s) if s.as_str() == "{\"a\":1}"));
        assert!(matches!(raw_frame(Value::str("hi")), DataFrame::Text(s) if s.as_str() == "hi"));
        let b = Value::record([
            ("type", Value::str("binary")),
            ("data", Value::str(vec![0u8, 1])),
        ]);
        assert!(matches!(raw_frame(b), DataFrame::Binary(_)));
    }

    #[test]
    fn other_topics_are_wrapped() {
        let m = Message {
            from: None,
            topic: Arc::from("alert"),
            payloads: vec![Value::Int(3)],
        };
        match outbound(m) {
            Outbound::Frame(DataFrame::Text(t)) => {
                assert_eq!(t.as_str(), r#"{"topic":"alert","data":3}"#)
            }
            _ => panic!("expected a text frame"),
        }
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        h.insert("host", "localhost:8081".parse().unwrap());
        let none = WsRelayOptions {
            allowed_origins: None,
        };
        assert!(origin_allowed(&none, &h));
        h.insert("origin", "http://localhost:8081".parse().unwrap());
        assert!(origin_allowed(&none, &h));
        h.insert("origin", "http://evil.com".parse().unwrap());
        assert!(!origin_allowed(&none, &h));
        let star = WsRelayOptions {
            allowed_origins: Some(vec!["*".into()]),
        };
        assert!(origin_allowed(&star, &h));
        let glob = WsRelayOptions {
            allowed_origins: Some(vec!["*.example.com".into()]),
        };
        h.insert("origin", "https://app.example.com".parse().unwrap());
        assert!(origin_allowed(&glob, &h));
    }
}
