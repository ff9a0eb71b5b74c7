//! The ticker app over a real WebSocket: handshake rules, welcome, snapshot, ticks, ping,
//! and cleanup when the client leaves.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use support::{app_project, token, Moonwire};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    url: &str,
    bearer: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("connect timed out")
    .map(|(ws, _)| ws)
}

async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no frame within 5s")
            .expect("stream ended")
            .expect("frame error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn query_url(mw: &Moonwire, token: &str) -> String {
    let enc: String = token
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("ws://{}/ws/ticker?x-auth-token={enc}", mw.addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_welcome_snapshot_ticks_and_pong() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let t = token(mw.addr(), &mw.demo_key());
    let mut ws = connect(&query_url(&mw, &t), None).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        serde_json::json!({"type": "welcome", "user_id": "user:demo"})
    );
    let snap = next_json(&mut ws).await;
    assert_eq!(snap["type"], "ticker");
    let data = snap["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for d in data {
        assert!(d["symbol"].is_string() && d["price"].is_number() && d["timestamp"].is_number());
    }
    ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    let start = Instant::now();
    let (mut ticks, mut pong) = (0, false);
    let mut prices = std::collections::HashSet::new();
    while start.elapsed() < Duration::from_secs(1) {
        let m = next_json(&mut ws).await;
        match m["type"].as_str() {
            Some("ticker") => {
                ticks += 1;
                prices.insert(m["data"][0]["price"].to_string());
            }
            Some("pong") => pong = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pong, "no pong");
    assert!(ticks >= 50, "only {ticks} ticks in 1s");
    assert!(prices.len() > 1, "prices never changed");
    ws.close(None).await.unwrap();
    mw.wait_for("client left", Duration::from_secs(5));
    mw.wait_for("unsubscribed", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_header_works_and_bad_tokens_are_refused() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let t = token(mw.addr(), &mw.demo_key());
    let url = format!("ws://{}/ws/ticker", mw.addr());
    let mut ws = connect(&url, Some(&t)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let err = connect(&url, None).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let mut forged = t.clone();
    forged.replace_range(0..1, if t.starts_with('A') { "B" } else { "A" });
    let err = connect(&url, Some(&forged)).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_leave_nothing_behind() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let t = token(mw.addr(), &mw.demo_key());
    let url = query_url(&mw, &t);
    for round in 0..3 {
        let mut conns = Vec::new();
        for _ in 0..20 {
            let mut ws = connect(&url, None).await.unwrap();
            assert_eq!(next_json(&mut ws).await["type"], "welcome");
            conns.push(ws);
        }
        for mut ws in conns {
            ws.close(None).await.unwrap();
        }
        let want = 20 * (round + 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while mw.count("unsubscribed") < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(mw.count("unsubscribed"), want);
    }
}
