//! Performance counters and their Prometheus exposition for `GET /metrics` (the `metrics`
//! middleware and Lua module): HTTP requests and latency by route, WebSocket connections and
//! frames, slow-client drops, processes, service restarts and reloads.
//!
//! One [`Metrics`] lives in a process-wide `LazyLock` static. The counters are bumped from hyper
//! connection tasks on every worker, from WebSocket connection processes, from service
//! supervisors and from the reload watcher: nothing owns all of these more cheaply than the
//! process does, and threading an `Arc<Metrics>` through each of them would only add a pointer
//! to every connection and process for the same atomic increments. Per-node state (the process
//! table) is not counted twice: [`render`] reads it from the `Node` it is given, at scrape time.
//!
//! The exposition is Prometheus text 0.0.4 ([`CONTENT_TYPE`]), not OpenMetrics: OpenMetrics
//! names a counter family without its `_total` suffix, so the `moonwire_ws_connections` gauge
//! (open now) and the `moonwire_ws_connections_total` counter would collide there.

use crate::process::table::ProcessTable;
use crate::registry::kinds::EntryId;
use crate::runtime::Node;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The route label of requests that matched no route (404) or no method (405): one series for
/// all of them, so a scanner probing random paths cannot grow the label set.
pub const UNMATCHED: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route pattern (`POST /auth/token`) or [`UNMATCHED`].
    pub route: Arc<str>,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Arc<str>,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

type Histograms = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric family, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Histograms,
    pub ws_connections: Gauge,
    pub ws_connections_total: Counter,
    pub ws_frames_in: Counter,
    pub ws_frames_out: Counter,
    pub ws_slow_client_drops: Counter,
    /// Set from the node's process table at scrape time.
    processes_alive: Gauge,
    process_spawns: Counter,
    pub service_restarts: Family<ServiceLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    unmatched: Arc<str>,
}

/// 0.5 ms to ~4 s, doubling: 14 buckets plus `+Inf`.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("moonwire"),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ws_connections: Gauge::default(),
            ws_connections_total: Counter::default(),
            ws_frames_in: Counter::default(),
            ws_frames_out: Counter::default(),
            ws_slow_client_drops: Counter::default(),
            processes_alive: Gauge::default(),
            process_spawns: Counter::default(),
            service_restarts: Family::default(),
            reloads: Family::default(),
            unmatched: Arc::from(UNMATCHED),
        };
        // Both outcomes from the start: a dashboard's rate() needs the zero.
        for result in ["ok", "rejected"] {
            let _ = m.reloads.get_or_create(&ReloadLabels { result });
        }
        // Each family is registered by a clone; clones share their values.
        let r = &mut m.registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by route pattern (or `unmatched`), method and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from routing to a built response (for a WebSocket, to the 101), by route and method",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "ws_connections",
            "WebSocket connections open now",
            m.ws_connections.clone(),
        );
        // The gauge above is `moonwire_ws_connections`; this counter encodes with `_total`.
        r.register(
            "ws_connections",
            "WebSocket connections accepted",
            m.ws_connections_total.clone(),
        );
        r.register(
            "ws_frames_in",
            "WebSocket text and binary frames received from clients",
            m.ws_frames_in.clone(),
        );
        r.register(
            "ws_frames_out",
            "WebSocket frames written to clients",
            m.ws_frames_out.clone(),
        );
        r.register(
            "ws_slow_client_drops",
            "WebSocket clients closed for not keeping up (outbound queue overflow: close 1013; or a write stalled past its timeout)",
            m.ws_slow_client_drops.clone(),
        );
        r.register(
            "processes_alive",
            "Processes with a pid now: Lua processes, HTTP handler calls, WebSocket connections",
            m.processes_alive.clone(),
        );
        r.register(
            "process_spawns",
            "Processes started since boot: Lua processes, HTTP handler calls, WebSocket connections",
            m.process_spawns.clone(),
        );
        r.register(
            "service_restarts",
            "Restarts of a process.service after its process failed",
            m.service_restarts.clone(),
        );
        r.register(
            "reloads",
            "Hot reloads applied (ok) or refused because the registry did not load or compile (rejected)",
            m.reloads.clone(),
        );
        m
    }
}

/// The process-wide metrics (see the module docs for why a static).
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// A `&'static` method label without allocating; unknown methods share `OTHER`.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

/// A request on a route whose chain has `metrics`: started at routing, recorded with the status
/// of the response by [`observed`].
pub struct HttpTimer {
    route: Arc<str>,
    method: &'static str,
    start: Instant,
}

impl HttpTimer {
    pub fn start(route: &Arc<str>, method: &str) -> HttpTimer {
        HttpTimer {
            route: route.clone(),
            method: method_label(method),
            start: Instant::now(),
        }
    }

    pub fn finish(self, status: u16) {
        let secs = self.start.elapsed().as_secs_f64();
        let m = &*METRICS;
        m.http_requests
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                method: self.method,
                status,
            })
            .inc();
        m.http_duration
            .get_or_create(&RouteLabels {
                route: self.route,
                method: self.method,
            })
            .observe(secs);
    }
}

/// Records `resp` against `timer` (when metrics are on for its route) and hands it back.
pub fn observed<B>(timer: Option<HttpTimer>, resp: hyper::Response<B>) -> hyper::Response<B> {
    if let Some(t) = timer {
        t.finish(resp.status().as_u16());
    }
    resp
}

/// Counts a 404/405 under route [`UNMATCHED`] (no chain, so no timing) and hands it back.
pub fn unmatched<B>(method: &str, resp: hyper::Response<B>) -> hyper::Response<B> {
    let m = &*METRICS;
    m.http_requests
        .get_or_create(&RequestLabels {
            route: m.unmatched.clone(),
            method: method_label(method),
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

pub fn ws_opened() {
    METRICS.ws_connections.inc();
    METRICS.ws_connections_total.inc();
}

pub fn ws_closed() {
    METRICS.ws_connections.dec();
}

/// A supervised service appears with 0 restarts before its first one.
pub fn service_supervised(service: &EntryId) {
    let _ = METRICS.service_restarts.get_or_create(&ServiceLabels {
        service: service.to_string(),
    });
}

pub fn service_restarted(service: &EntryId) {
    METRICS
        .service_restarts
        .get_or_create(&ServiceLabels {
            service: service.to_string(),
        })
        .inc();
}

/// A reload that was applied (`true`) or rejected whole (`false`).
pub fn reload(applied: bool) {
    let result = if applied { "ok" } else { "rejected" };
    METRICS
        .reloads
        .get_or_create(&ReloadLabels { result })
        .inc();
}

/// The exposition text, with the process figures of `node`.
pub fn render(node: &Node) -> String {
    render_with(&node.procs)
}

fn render_with(procs: &ProcessTable) -> String {
    let m = &*METRICS;
    m.processes_alive
        .set(i64::try_from(procs.alive()).unwrap_or(i64::MAX));
    m.process_spawns.inner().store(
        procs.stats.spawned.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    let mut out = String::with_capacity(8 * 1024);
    prometheus_text::encode(&mut out, &m.registry).expect("encoding into a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series ` (name plus labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_counted_request_shows_up_with_its_labels() {
        let table = ProcessTable::default();
        let route: Arc<str> = Arc::from("GET /unit/counted");
        let series =
            r#"moonwire_http_requests_total{route="GET /unit/counted",method="GET",status="200"}"#;
        let before = sample(&render_with(&table), series).unwrap_or(0.0);
        HttpTimer::start(&route, "GET").finish(200);
        HttpTimer::start(&route, "GET").finish(200);
        let text = render_with(&table);
        assert_eq!(sample(&text, series), Some(before + 2.0), "{text}");
        assert!(text.contains("# TYPE moonwire_http_request_duration_seconds histogram"));
        let count = r#"moonwire_http_request_duration_seconds_count{route="GET /unit/counted",method="GET"}"#;
        assert!(sample(&text, count).unwrap() >= 2.0, "{text}");
        let first = r#"moonwire_http_request_duration_seconds_bucket{route="GET /unit/counted",method="GET",le="0.0005"}"#;
        let last = r#"moonwire_http_request_duration_seconds_bucket{route="GET /unit/counted",method="GET",le="+Inf"}"#;
        assert!(sample(&text, first).is_some(), "{text}");
        assert!(sample(&text, last).unwrap() >= 2.0, "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let table = ProcessTable::default();
        let route: Arc<str> = Arc::from("GET /unit/\"quoted\"\\back\nline");
        HttpTimer::start(&route, "BREW").finish(418);
        let text = render_with(&table);
        let series = r#"moonwire_http_requests_total{route="GET /unit/\"quoted\"\\back\nline",method="OTHER",status="418"}"#;
        assert!(sample(&text, series).unwrap() >= 1.0, "{text}");
    }

    #[test]
    fn process_figures_come_from_the_table() {
        let table = ProcessTable::default();
        let a = table.register("h", Arc::from("e"));
        table.register("h", Arc::from("e"));
        table.exit(
            &a.pid,
            crate::process::pid::ExitResult::Value(crate::process::value::Value::Nil),
        );
        let text = render_with(&table);
        assert_eq!(
            sample(&text, "moonwire_processes_alive"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "moonwire_process_spawns_total"),
            Some(2.0),
            "{text}"
        );
    }

    #[test]
    fn every_family_is_exposed_and_typed() {
        unmatched(
            "DELETE",
            hyper::Response::builder().status(405).body(()).unwrap(),
        );
        service_restarted(&EntryId::new("unit", "svc"));
        reload(true);
        let text = render_with(&ProcessTable::default());
        for (name, kind) in [
            ("moonwire_http_requests_total", "counter"),
            ("moonwire_http_request_duration_seconds", "histogram"),
            ("moonwire_ws_connections", "gauge"),
            ("moonwire_ws_connections_total", "counter"),
            ("moonwire_ws_frames_in_total", "counter"),
            ("moonwire_ws_frames_out_total", "counter"),
            ("moonwire_ws_slow_client_drops_total", "counter"),
            ("moonwire_processes_alive", "gauge"),
            ("moonwire_process_spawns_total", "counter"),
            ("moonwire_service_restarts_total", "counter"),
            ("moonwire_reloads_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        assert!(
            sample(
                &text,
                r#"moonwire_http_requests_total{route="unmatched",method="DELETE",status="405"}"#
            )
            .unwrap()
                >= 1.0
        );
        assert!(
            sample(
                &text,
                r#"moonwire_service_restarts_total{service="unit:svc"}"#
            )
            .unwrap()
                >= 1.0
        );
        assert!(sample(&text, r#"moonwire_reloads_total{result="ok"}"#).unwrap() >= 1.0);
        assert!(sample(&text, r#"moonwire_reloads_total{result="rejected"}"#).is_some());
    }
}
