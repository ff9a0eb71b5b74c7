//! `GET /metrics` on the ticker app: after a known set of requests and one WebSocket, the
//! Prometheus text counts exactly those requests, by route, method and status.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{app_project, post_json, request, token, Moonwire};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad value for {series}"))
        })
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn requests(route: &str, method: &str, status: u16) -> String {
    format!(
        r#"moonwire_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#
    )
}

fn scrape(addr: SocketAddr) -> String {
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let addr = mw.addr();
    let t = token(addr, &mw.demo_key());
    let r = post_json(addr, "/auth/token", &json!({"api_key": "nope"}));
    assert_eq!(r.status, 401);
    let r = request(
        addr,
        "OPTIONS",
        "/auth/token",
        &[
            ("Origin", "http://example.com"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    // No route takes DELETE here (the SPA mount answers every other path, so 405, not 404).
    assert_eq!(request(addr, "DELETE", "/auth/token", &[], b"").status, 405);
    // The static mount (with its SPA fallback) does not list `metrics`: not counted.
    assert_eq!(request(addr, "GET", "/missing.js", &[], b"").status, 200);
    assert_eq!(request(addr, "GET", "/ws/ticker", &[], b"").status, 401);

    let mut req = format!("ws://{addr}/ws/ticker")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("connect timed out")
    .unwrap();
    let mut seen = 0;
    while seen < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no frame within 5s")
            .expect("stream ended")
            .unwrap();
        if frame.is_text() {
            seen += 1;
        }
    }
    let during = scrape(addr);
    assert_eq!(value(&during, "moonwire_ws_connections"), 1.0, "{during}");
    ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    ws.close(None).await.unwrap();

    // The connection process closes after the handshake: poll until the gauge is back at 0.
    let mut scrapes = 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(addr);
        scrapes += 1;
        if value(&text, "moonwire_ws_connections") == 0.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    assert_eq!(value(&text, "moonwire_ws_connections"), 0.0, "{text}");
    assert_eq!(value(&text, "moonwire_ws_connections_total"), 1.0);
    assert_eq!(value(&text, "moonwire_ws_frames_in_total"), 1.0, "the ping");
    assert!(
        value(&text, "moonwire_ws_frames_out_total") >= 2.0,
        "{text}"
    );
    assert_eq!(value(&text, "moonwire_ws_slow_client_drops_total"), 0.0);

    for (route, method, status, n) in [
        ("POST /auth/token", "POST", 200, 1),
        ("POST /auth/token", "POST", 401, 1),
        ("OPTIONS /auth/token", "OPTIONS", 204, 1),
        ("unmatched", "DELETE", 405, 1),
        ("GET /ws/ticker", "GET", 401, 1),
        ("GET /ws/ticker", "GET", 101, 1),
        // This scrape is recorded once its response is built: the earlier ones only.
        ("GET /metrics", "GET", 200, scrapes - 1),
    ] {
        assert_eq!(
            value(&text, &requests(route, method, status)),
            f64::from(n),
            "{route} {status}:\n{text}"
        );
    }
    let counted: usize = text
        .lines()
        .filter(|l| l.starts_with("moonwire_http_requests_total{"))
        .count();
    assert_eq!(counted, 7, "only the requests above:\n{text}");
    assert!(!text.contains(r#"route="GET /""#), "{text}");

    assert!(text.contains("# TYPE moonwire_http_request_duration_seconds histogram"));
    let h =
        r#"moonwire_http_request_duration_seconds_count{route="POST /auth/token",method="POST"}"#;
    assert_eq!(value(&text, h), 2.0);
    let inf = r#"moonwire_http_request_duration_seconds_bucket{route="POST /auth/token",method="POST",le="+Inf"}"#;
    assert_eq!(value(&text, inf), 2.0);
    let sum =
        r#"moonwire_http_request_duration_seconds_sum{route="POST /auth/token",method="POST"}"#;
    assert!(value(&text, sum) > 0.0);

    // The ticker service, the scraping handler call itself; and everything spawned so far.
    assert!(value(&text, "moonwire_processes_alive") >= 2.0, "{text}");
    assert!(
        value(&text, "moonwire_process_spawns_total") >= 10.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"moonwire_service_restarts_total{service="app:ticker-service"}"#
        ),
        0.0
    );
    assert_eq!(value(&text, r#"moonwire_reloads_total{result="ok"}"#), 0.0);
    assert_eq!(
        value(&text, r#"moonwire_reloads_total{result="rejected"}"#),
        0.0
    );
}
