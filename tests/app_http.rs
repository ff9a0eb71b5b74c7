//! The ticker app over real HTTP: token exchange, CORS, static files, limits, errors.

mod support;

use serde_json::json;
use support::{app_project, post_json, request, Moonwire};

#[test]
fn token_exchange_answers_as_the_tutorial_says() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let key = mw.demo_key();
    let addr = mw.addr();

    let r = request(addr, "POST", "/auth/token", &[], b"{not json");
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "invalid JSON"}))
    );
    let r = post_json(addr, "/auth/token", &json!({}));
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "api_key required"}))
    );
    let r = post_json(addr, "/auth/token", &json!({"api_key": "nope"}));
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"error": "invalid API key"}))
    );
    let r = post_json(addr, "/auth/token", &json!({ "api_key": key }));
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["user_id"], "demo");
    assert_eq!(body["role"], "user");
    assert_eq!(body["expires_in"], 3600);
    let token = body["token"].as_str().unwrap();
    let (base, sig) = token.split_once('.').unwrap();
    assert_eq!((base.len(), sig.len()), (44, 44), "{token}");
}

#[test]
fn demo_key_survives_a_restart() {
    let dir = app_project();
    let mut first = Moonwire::start(dir.path(), true);
    let key = first.demo_key();
    assert!(first
        .wait_for("demo API key", std::time::Duration::from_secs(5))
        .contains("created"));
    assert!(first.stop().success());
    let second = Moonwire::start(dir.path(), true);
    let line = second.wait_for("demo API key", std::time::Duration::from_secs(20));
    assert!(line.contains("exists"), "{line}");
    assert_eq!(second.demo_key(), key);
    support::token(second.addr(), &key);
}

#[test]
fn cors_preflight_is_answered() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let r = request(
        mw.addr(),
        "OPTIONS",
        "/auth/token",
        &[
            ("Origin", "http://example.com"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://example.com")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let r = request(
        mw.addr(),
        "POST",
        "/auth/token",
        &[("Origin", "http://example.com")],
        b"{}",
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://example.com")
    );
}

#[test]
fn static_files_spa_fallback_and_no_escape() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let addr = mw.addr();
    let index = request(addr, "GET", "/", &[], b"");
    assert_eq!(index.status, 200);
    assert!(index
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let spa = request(addr, "GET", "/some/client/route", &[], b"");
    assert_eq!((spa.status, spa.body.clone()), (200, index.body.clone()));
    let js = request(addr, "GET", "/app.js", &[], b"");
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").unwrap().contains("javascript"));
    let etag = js.header("etag").unwrap().to_string();
    let cached = request(addr, "GET", "/app.js", &[("If-None-Match", &etag)], b"");
    assert_eq!(cached.status, 304);
    for evil in [
        "/../registry/_index.yaml",
        "/%2e%2e/registry/_index.yaml",
        "/..%2fregistry%2f_index.yaml",
    ] {
        let r = request(addr, "GET", evil, &[], b"");
        assert!(
            !r.text().contains("namespace: app"),
            "{evil} escaped the folder"
        );
    }
}

#[test]
fn ws_endpoint_without_token_is_401_json() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let r = request(mw.addr(), "GET", "/ws/ticker", &[], b"");
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"error": "authentication required"}))
    );
    let r = request(
        mw.addr(),
        "GET",
        "/ws/ticker",
        &[("Authorization", "Bearer forged.token")],
        b"",
    );
    assert_eq!(r.status, 401);
}

#[test]
fn body_limit_and_unknown_routes() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let big = vec![b'x'; 2 << 20];
    let r = request(mw.addr(), "POST", "/auth/token", &[], &big);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string());
    let r = request(mw.addr(), "DELETE", "/auth/token", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(mw.count("panicked"), 0);
}
