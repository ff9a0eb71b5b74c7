//! Price alerts and the public ticker over real HTTP and WebSocket: create → fire once on the
//! owner's socket → marked fired; persistence across restarts and across `kill -9`; the 500 ms
//! reply timeout; the in-place upgrade of the tutorial's database.

mod support;

use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{app_project, request, token, Moonwire};
use tokio_tungstenite::tungstenite::Message;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// POST /api/alerts; a 503 (the alerts process has not seen a price yet, just after start) is
/// retried for a few seconds.
fn post_alert(
    addr: std::net::SocketAddr,
    auth: &str,
    body: serde_json::Value,
) -> support::HttpResponse {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = request(
            addr,
            "POST",
            "/api/alerts",
            &[
                ("Authorization", auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        );
        if r.status != 503 || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn list(addr: std::net::SocketAddr, auth: &str) -> Vec<serde_json::Value> {
    let r = request(addr, "GET", "/api/alerts", &[("Authorization", auth)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["alerts"].as_array().unwrap().clone()
}

fn current_price(addr: std::net::SocketAddr, symbol: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = request(addr, "GET", "/api/ticker", &[], b"");
        if r.status == 200 {
            let body = r.json();
            assert_eq!(body["type"], "ticker");
            if let Some(p) = body["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["symbol"] == symbol)
            {
                return p["price"].as_f64().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no ticker snapshot: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn public_ticker_comes_from_the_cache_without_auth() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let first = current_price(mw.addr(), "BTC-USD");
    assert!(first > 0.0);
    let r = request(mw.addr(), "GET", "/api/ticker", &[], b"");
    assert_eq!(r.header("cache-control"), Some("public, max-age=1"));
    let symbols: Vec<_> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["symbol"].clone())
        .collect();
    assert_eq!(
        symbols,
        [json!("BTC-USD"), json!("ETH-USD"), json!("SOL-USD")]
    );
    // The cache follows the ticker: within a second the snapshot changes.
    let deadline = Instant::now() + Duration::from_secs(3);
    while request(mw.addr(), "GET", "/api/ticker", &[], b"").text() == r.text() {
        assert!(Instant::now() < deadline, "snapshot never changed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_alerts_are_refused_with_reasons() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let auth = bearer(&token(mw.addr(), &mw.demo_key()));
    for (body, reason) in [
        (json!({"above": 1}), "symbol required"),
        (
            json!({"symbol": "BTC-USD"}),
            "give exactly one of above or below",
        ),
        (
            json!({"symbol": "BTC-USD", "above": 1, "below": 2}),
            "give exactly one of above or below",
        ),
        (
            json!({"symbol": "BTC-USD", "below": -3}),
            "below must be a positive number",
        ),
        (
            json!({"symbol": "BTC-USD", "above": "high"}),
            "above must be a positive number",
        ),
    ] {
        let r = post_alert(mw.addr(), &auth, body.clone());
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (400, json!(reason)),
            "{body}"
        );
    }
    let r = post_alert(mw.addr(), &auth, json!({"symbol": "DOGE-USD", "above": 1}));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("unknown symbol DOGE-USD"))
    );
    let r = request(
        mw.addr(),
        "POST",
        "/api/alerts",
        &[("Authorization", &auth)],
        b"{oops",
    );
    assert_eq!(r.status, 400);
    let r = post_alert(mw.addr(), "", json!({"symbol": "BTC-USD", "above": 1}));
    assert_eq!(r.status, 401);
    let r = request(
        mw.addr(),
        "DELETE",
        "/api/alerts/abc",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 400);
    let r = request(
        mw.addr(),
        "DELETE",
        "/api/alerts/999",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 404);
    assert!(list(mw.addr(), &auth).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fires_once_on_the_owners_socket() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let addr = mw.addr();
    let t = token(addr, &mw.demo_key());
    let auth = bearer(&t);
    let url = format!(
        "ws://{addr}/ws/ticker?x-auth-token={}",
        support::urlencode(&t)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let price = tokio::task::spawn_blocking(move || current_price(addr, "ETH-USD"))
        .await
        .unwrap();

    // Another user's socket must not see this user's alert.
    let other = support::create_key(dir.path(), "eve@example.com", "pw-eve", "read,trade");
    let other_token = tokio::task::spawn_blocking({
        let other = support::ApiKey {
            api_key: other.api_key.clone(),
            secret: other.secret.clone(),
        };
        move || {
            support::signed_request(
                addr,
                &other,
                "POST",
                "/auth/token",
                b"",
                support::unix_now(),
            )
        }
    })
    .await
    .unwrap();
    let other_t = other_token.json()["token"].as_str().unwrap().to_string();
    let other_url = format!(
        "ws://{addr}/ws/ticker?x-auth-token={}",
        support::urlencode(&other_t)
    );
    let (mut other_ws, _) = tokio_tungstenite::connect_async(other_url.as_str())
        .await
        .unwrap();

    let (fire, keep) = tokio::task::spawn_blocking({
        let auth = auth.clone();
        move || {
            let fire = post_alert(
                addr,
                &auth,
                json!({"symbol": "ETH-USD", "above": price * 0.5}),
            );
            let keep = post_alert(
                addr,
                &auth,
                json!({"symbol": "ETH-USD", "above": price * 100.0}),
            );
            (fire, keep)
        }
    })
    .await
    .unwrap();
    assert_eq!(fire.status, 201, "{}", fire.text());
    assert_eq!(keep.status, 201);
    assert!(fire.json()["ref_id"].as_str().unwrap().len() >= 32);
    let fire_id = fire.json()["alert"]["id"].as_i64().unwrap();
    let keep_id = keep.json()["alert"]["id"].as_i64().unwrap();

    let alert = next_alert(&mut ws, Duration::from_secs(5))
        .await
        .expect("the alert frame");
    assert_eq!(alert["alert"]["id"], fire_id);
    assert_eq!(alert["alert"]["direction"], "above");
    assert!(alert["alert"]["fired_price"].as_f64().unwrap() >= price * 0.5);
    // Once: no second alert frame for it, and nothing on the other user's socket.
    assert!(next_alert(&mut ws, Duration::from_millis(500))
        .await
        .is_none());
    assert!(next_alert(&mut other_ws, Duration::from_millis(100))
        .await
        .is_none());

    let alerts = tokio::task::spawn_blocking(move || list(addr, &auth))
        .await
        .unwrap();
    let status = |id: i64| alerts.iter().find(|a| a["id"] == id).unwrap()["status"].clone();
    assert_eq!(
        (status(fire_id), status(keep_id)),
        (json!("fired"), json!("open"))
    );
    // The other user can neither see nor delete them.
    let other_auth = bearer(&other_t);
    let r = tokio::task::spawn_blocking(move || {
        let seen = list(addr, &other_auth);
        let del = request(
            addr,
            "DELETE",
            &format!("/api/alerts/{keep_id}"),
            &[("Authorization", &other_auth)],
            b"",
        );
        (seen, del.status)
    })
    .await
    .unwrap();
    assert_eq!(r, (vec![], 404));
}

/// The next alert frame within `within`, or `None` when none came. A socket that ends or
/// fails fails the test: "no alert" must mean the connection was alive and got none.
async fn next_alert(ws: &mut support_ws::Ws, within: Duration) -> Option<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()?
            .expect("the socket ended while waiting for an alert")
            .expect("the socket failed while waiting for an alert");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "alert" {
                return Some(v);
            }
        }
    }
}

mod support_ws {
    pub type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;
}

/// The app started in `dir`, its demo key, and a bearer header for it.
fn start_with_token(dir: &std::path::Path) -> (Moonwire, String, String) {
    let mw = Moonwire::start(dir, true);
    let key = mw.demo_key();
    let auth = bearer(&token(mw.addr(), &key));
    (mw, key, auth)
}

#[test]
fn committed_writes_survive_kill_9() {
    let dir = app_project();
    let (mut mw, key, auth) = start_with_token(dir.path());
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = post_alert(
            mw.addr(),
            &auth,
            json!({"symbol": "BTC-USD", "above": 1e9 + f64::from(i)}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["alert"]["id"].clone());
    }
    // Killed at once after the last answer: no shutdown, no checkpoint.
    mw.kill();

    let mw = Moonwire::start(dir.path(), true);
    // The same demo key (one row of the first run's migration) and every answered write.
    mw.wait_for("demo API key exists", Duration::from_secs(20));
    assert_eq!(mw.count("demo API key created"), 0);
    let auth = bearer(&token(mw.addr(), &key));
    let mut got: Vec<serde_json::Value> = list(mw.addr(), &auth)
        .into_iter()
        .map(|a| a["id"].clone())
        .collect();
    got.sort_by_key(|v| v.to_string());
    ids.sort_by_key(|v| v.to_string());
    assert_eq!(got, ids);
}

#[test]
fn alerts_survive_a_restart() {
    let dir = app_project();
    let (mut mw, key, auth) = start_with_token(dir.path());
    let r = post_alert(
        mw.addr(),
        &auth,
        json!({"symbol": "SOL-USD", "below": 0.01}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["alert"]["id"].clone();
    assert!(mw.stop().success());

    let mw = Moonwire::start(dir.path(), true);
    let line = mw.wait_for("alerts started", Duration::from_secs(10));
    assert!(line.contains("open=1"), "{line}");
    let auth = bearer(&token(mw.addr(), &key));
    let alerts = list(mw.addr(), &auth);
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0]["id"].clone(), alerts[0]["status"].clone()),
        (id.clone(), json!("open"))
    );
    let r = request(
        mw.addr(),
        "DELETE",
        &format!("/api/alerts/{id}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!((r.status, r.json()), (200, json!({"deleted": id})));
}

#[test]
fn a_slow_alerts_process_gives_504_with_the_ref_id() {
    let dir = app_project();
    // An alerts process that takes the request and answers far too late.
    std::fs::write(
        dir.path().join("scripts/alerts.lua"),
        r#"
local time = require("time")
local function main()
    process.registry.register("alerts")
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        local req = msg:payload():data()
        time.sleep("2s")
        process.send(req.reply_to, "alerts.reply", {ref_id = req.ref_id, alert = {}})
    end
end
return { main = main }
"#,
    )
    .unwrap();
    let mw = Moonwire::start(dir.path(), true);
    mw.wait_for(
        "service started service=app:alerts-service",
        Duration::from_secs(10),
    );
    let auth = bearer(&token(mw.addr(), &mw.demo_key()));
    let started = Instant::now();
    let r = post_alert(mw.addr(), &auth, json!({"symbol": "BTC-USD", "above": 1}));
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "alerts service timeout");
    let ref_id = r.json()["ref_id"].as_str().unwrap().to_string();
    assert_eq!(ref_id.len(), 36, "{ref_id}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // The late reply reaches a pid that no longer exists and is dropped; the server is fine.
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(
        request(mw.addr(), "GET", "/api/ticker", &[], b"").status,
        200
    );
}

#[test]
fn the_tutorial_database_is_upgraded_in_place() {
    let dir = app_project();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    {
        let db = rusqlite::Connection::open(dir.path().join("data/auth.db")).unwrap();
        db.execute_batch(
            "CREATE TABLE api_keys (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                api_key TEXT UNIQUE NOT NULL,
                user_id TEXT NOT NULL,
                role TEXT NOT NULL DEFAULT 'user',
                created_at INTEGER NOT NULL
            );
            INSERT INTO api_keys (api_key, user_id, role, created_at) VALUES ('tutorial-key-0001', 'demo', 'user', 1);
            INSERT INTO api_keys (api_key, user_id, role, created_at) VALUES ('tutorial-key-0002', 'carol', 'admin', 2);",
        )
        .unwrap();
    }
    let mw = Moonwire::start(dir.path(), true);
    assert_eq!(mw.demo_key(), "tutorial-key-0001");
    assert!(mw
        .wait_for("api_keys upgraded", Duration::from_secs(5))
        .contains("permissions"));
    for key in ["tutorial-key-0001", "tutorial-key-0002"] {
        let t = token(mw.addr(), key);
        let r = request(
            mw.addr(),
            "GET",
            "/api/me",
            &[("Authorization", &bearer(&t))],
            b"",
        );
        assert_eq!(
            r.json()["permissions"],
            json!(["read", "trade"]),
            "{}",
            r.text()
        );
    }
    let (ok, out, _) = support::cli(dir.path(), &["keys", "list"], &[]);
    assert!(ok);
    assert!(
        out.contains("tutorial-key-0002\tcarol\tread,trade\tactive\tlegacy"),
        "{out}"
    );
}
