//! One `http.service`: binds, accepts, and hands each connection to a worker thread, where
//! hyper serves it and endpoint handlers run on that worker's Lua state without a thread hop.
//! Maps every outcome (no route, body too large, Lua error, no response) to a JSON answer.

use crate::http::router::{Chain, Match, RouteTable, Target};
use crate::http::ws_relay;
use crate::lua::modules::http::{parse_query, HttpFrame, ResponseState};
use crate::metrics;
use crate::process::pid::ExitResult;
use crate::process::value::Value;
use crate::registry::kinds::EntryId;
use crate::runtime::Node;
use crate::security::SecurityContext;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

pub type Body = Full<Bytes>;

/// Default request body limit.
pub const BODY_LIMIT: usize = 1 << 20;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A body over the limit is read and thrown away (up to this much, for at most this long)
/// before the 413 goes out: closing a socket with unread input makes the kernel reset the
/// connection, and a client still sending its body would lose the answer.
const DISCARD_LIMIT: u64 = 16 << 20;
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ServerState {
    pub id: EntryId,
    /// `id` as the host label of the WebSocket connections' pids (interned once, not per
    /// connection).
    pub pid_label: &'static str,
    pub node: Arc<Node>,
    pub routes: RwLock<Arc<RouteTable>>,
    pub baseline: Arc<SecurityContext>,
    pub body_limit: usize,
    pub ws_buffer: usize,
    pub idle_timeout: Option<Duration>,
    /// Open HTTP connections and WebSockets, against `host.max_connections`.
    pub connections: Arc<ConnectionLimit>,
    /// Flips to true on shutdown: connections finish, WebSockets close with 1001.
    pub shutdown: watch::Receiver<bool>,
}

pub struct ServerHandle {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    shutdown: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Replaces the route table; in-flight requests and open WebSockets keep what they have.
    pub fn swap_routes(&self, routes: RouteTable) {
        *self.state.routes.write().expect("routes lock") = Arc::new(routes);
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
        let _ = self.accept.await;
    }
}

/// `":8081"` means every interface.
pub fn normalize_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    }
}

pub struct ServerConfig {
    pub id: EntryId,
    pub addr: String,
    pub baseline: Arc<SecurityContext>,
    pub ws_buffer: usize,
    pub idle_timeout: Option<Duration>,
    pub max_connections: usize,
}

/// Counts open connections; a slot is held for a connection's whole life (an upgraded
/// WebSocket takes its own before the HTTP connection's is released).
pub struct ConnectionLimit {
    max: usize,
    open: std::sync::atomic::AtomicUsize,
    /// When a refusal was last logged: at most one line a second while the limit holds.
    last_refusal_log: std::sync::Mutex<Option<std::time::Instant>>,
}

/// One open connection; frees its place when dropped.
pub struct ConnectionSlot(Arc<ConnectionLimit>);

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            max: max.max(1),
            open: std::sync::atomic::AtomicUsize::new(0),
            last_refusal_log: std::sync::Mutex::new(None),
        })
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionSlot> {
        use std::sync::atomic::Ordering;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.clone()))
    }

    /// A slot for a connection that already holds one and is about to release it (a WebSocket
    /// taking over its HTTP connection): the count may exceed the limit by that one, briefly.
    pub fn hand_over(self: &Arc<Self>) -> ConnectionSlot {
        self.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        ConnectionSlot(self.clone())
    }

    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub async fn start(
    node: Arc<Node>,
    cfg: ServerConfig,
    routes: RouteTable,
) -> std::io::Result<ServerHandle> {
    let listener = tokio::net::TcpListener::bind(normalize_addr(&cfg.addr)).await?;
    let addr = listener.local_addr()?;
    tracing::info!(server = %cfg.id, addr = %addr, "listening");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(ServerState {
        pid_label: crate::process::pid::intern_label(&cfg.id.to_string()),
        id: cfg.id,
        node: node.clone(),
        routes: RwLock::new(Arc::new(routes)),
        baseline: cfg.baseline,
        body_limit: BODY_LIMIT,
        ws_buffer: cfg.ws_buffer.max(1),
        idle_timeout: cfg.idle_timeout,
        connections: ConnectionLimit::new(cfg.max_connections),
        shutdown: shutdown_rx,
    });
    let accept_state = state.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = accept_state.connections.try_acquire() else {
                // Closing at once tells the client to back off; serving it would take memory
                // and a descriptor the limit exists to protect.
                refused_connection(&accept_state, peer);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand over connection");
                    continue;
                }
            };
            let st = accept_state.clone();
            node.scheduler.submit_connection(Box::new(
                move || match tokio::net::TcpStream::from_std(std_stream) {
                    Ok(stream) => {
                        tokio::task::spawn_local(async move {
                            serve_connection(stream, peer, st).await;
                            drop(slot);
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot adopt connection"),
                },
            ));
        }
    });
    Ok(ServerHandle {
        addr,
        state,
        shutdown: shutdown_tx,
        accept,
    })
}

/// Logs a refused connection, at most once a second per server.
fn refused_connection(state: &ServerState, peer: SocketAddr) {
    let limit = &state.connections;
    let mut last = limit
        .last_refusal_log
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(server = %state.id, %peer, open = limit.open(), "connection limit reached; refusing connections");
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
) {
    let mut shutdown = state.shutdown.clone();
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let st = svc_state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, peer, st).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, serde_json::json!({ "error": message }))
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<ServerState>,
) -> Response<Body> {
    let routes = state.routes.read().expect("routes lock").clone();
    let path = req.uri().path().to_string();
    let method = req.method().as_str().to_string();
    let (route, params, rest) = match routes.find(&method, &path) {
        Match::Found {
            route,
            params,
            rest,
        } => (route, params, rest),
        Match::MethodNotAllowed => {
            let r = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            return metrics::unmatched(&method, r);
        }
        Match::NotFound => {
            return metrics::unmatched(&method, error_response(StatusCode::NOT_FOUND, "not found"))
        }
    };
    let chain = route.chain.clone();
    // Off: no clock read, no labels. On: every answer below goes through `metrics::observed`.
    let timer = chain
        .metrics
        .then(|| metrics::HttpTimer::start(&route.pattern, &method));
    if let Some(cors) = &chain.cors {
        if let Some(preflight) = cors.preflight(req.method(), req.headers()) {
            return metrics::observed(timer, preflight);
        }
    }
    // `decorate` reads only Origin: copying that one value beats cloning the whole map.
    let cors_headers = chain.cors.as_ref().map(|_| {
        let mut h = hyper::HeaderMap::new();
        if let Some(origin) = req.headers().get(hyper::header::ORIGIN) {
            h.insert(hyper::header::ORIGIN, origin.clone());
        }
        h
    });
    let mut resp = match &route.target {
        Target::Options => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Target::Static { site } => {
            let rel = match req.uri().query() {
                Some(q) => format!("/{rest}?{q}"),
                None => format!("/{rest}"),
            };
            site.serve(req.method(), &rel, req.headers()).await
        }
        Target::Endpoint { entry, func } => {
            endpoint(req, peer, &state, &chain, entry, func, params).await
        }
    };
    if let (Some(cors), Some(h)) = (&chain.cors, cors_headers) {
        cors.decorate(&h, resp.headers_mut());
    }
    metrics::observed(timer, resp)
}

async fn endpoint(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    state: &Arc<ServerState>,
    chain: &Chain,
    entry: &EntryId,
    func: &EntryId,
    params: Vec<(String, String)>,
) -> Response<Body> {
    let query = parse_query(req.uri().query());
    let mut security = state.baseline.clone();
    if let Some(auth) = &chain.token_auth {
        if let Some(ctx) = auth.authenticate(&state.node, req.headers(), &query) {
            security = Arc::new(ctx);
        }
    }
    let on_upgrade = (chain.ws_relay.is_some() && ws_relay::is_upgrade_request(req.headers()))
        .then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.body_limit as u64) {
        if declared.is_some_and(|n| n <= DISCARD_LIMIT) {
            discard(body, 0).await;
        }
        return too_large();
    }
    let body = match read_body(body, state.body_limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Read) => {
            return error_response(StatusCode::BAD_REQUEST, "could not read request body")
        }
    };
    if let Some(auth) = &chain.api_auth {
        match auth.admit(&state.node, peer.ip(), &parts, &body).await {
            Ok(Some(ctx)) => security = Arc::new(ctx),
            Ok(None) => {}
            Err(answer) => return answer,
        }
    }
    let Some(code) = state.node.code(func) else {
        tracing::error!(endpoint = %entry, func = %func, "handler code not found");
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "handler not available");
    };
    let frame = Rc::new(HttpFrame {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query,
        // Only the relay reads `parts.headers` afterwards; otherwise the frame takes them.
        headers: if chain.ws_relay.is_some() {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        },
        body,
        remote_addr: peer.to_string(),
        params,
        response: Default::default(),
    });
    let result =
        crate::lua::function::call_handler(&state.node, code, frame.clone(), security).await;
    let mut out = std::mem::take(&mut *frame.response.borrow_mut());
    if let ExitResult::Error(e) = &result {
        tracing::error!(endpoint = %entry, func = %func, error = %e, "handler failed");
    }
    if let Some(relay) = &chain.ws_relay {
        if let Some(header) = out.remove_header("X-WS-Relay") {
            if out.body.is_empty() {
                match ws_relay::accept(state, relay, &parts, on_upgrade, &header) {
                    ws_relay::Outcome::Upgrade(resp) => return resp,
                    ws_relay::Outcome::Reject(resp) => return resp,
                    ws_relay::Outcome::PassThrough => {}
                }
            } else {
                tracing::error!(endpoint = %entry, "X-WS-Relay set after the body was written; not upgrading");
            }
        }
    }
    if out.touched {
        let resp = build_response(out);
        if let Some(auth) = &chain.api_auth {
            auth.observe(peer.ip(), resp.status());
        }
        return resp;
    }
    match result {
        ExitResult::Error(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e),
        ExitResult::Value(Value::Nil) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "no response sent")
        }
        ExitResult::Value(v) => json_response(StatusCode::OK, v.to_json()),
    }
}

enum BodyError {
    TooLarge,
    Read,
}

/// Collects the body up to `limit` bytes; past that, drains the rest (see `DISCARD_LIMIT`).
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Read)?.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            discard(body, len as u64).await;
            return Err(BodyError::TooLarge);
        }
        // One chunk (the usual small body) is kept without a copy.
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(f) = first.take() {
                    rest.extend_from_slice(&f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(rest)))
}

/// Reads and drops what is left of a rejected body, within `DISCARD_LIMIT`/`DISCARD_TIMEOUT`.
async fn discard(mut body: Incoming, mut seen: u64) {
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                seen += d.len() as u64;
                if seen > DISCARD_LIMIT {
                    break;
                }
            }
        }
    })
    .await;
}

fn too_large() -> Response<Body> {
    let mut r = error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    // The connection cannot be reused when the body was not read to its end.
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn build_response(out: ResponseState) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(out.body)));
    *r.status_mut() = out
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    for (k, v) in out.headers {
        match (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            (Ok(k), Ok(v)) => {
                r.headers_mut().insert(k, v);
            }
            _ => tracing::warn!(header = %k, "handler set an invalid header; dropped"),
        }
    }
    r
}
