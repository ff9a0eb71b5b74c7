//! `/api/*` authentication over real HTTP: every accepted mode (signed requests, Basic, store
//! tokens, internal tokens) and every way to fool one, plus per-key permissions. Keys and users
//! are made with the real `moonwire users|keys|tokens` commands.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{app_project, basic, cli, create_key, request, signed_request, unix_now, Moonwire};

/// GET /api/me with an Authorization header.
fn me(addr: std::net::SocketAddr, authorization: &str) -> support::HttpResponse {
    request(
        addr,
        "GET",
        "/api/me",
        &[("Authorization", authorization)],
        b"",
    )
}

/// The app, running, with its migration done (the demo key is logged after the schema).
fn started_app() -> (tempfile::TempDir, Moonwire) {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    mw.demo_key();
    (dir, mw)
}

fn error(r: &support::HttpResponse) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn signed_requests_pass_and_forgeries_fail() {
    let (dir, mw) = started_app();
    let addr = mw.addr();
    let key = create_key(dir.path(), "ann@example.com", "hunter22", "read,trade");
    let now = unix_now();

    let r = signed_request(addr, &key, "GET", "/api/me", b"", now);
    assert_eq!(r.status, 200, "{}", r.text());
    let me = r.json();
    assert_eq!(me["auth"], "signature");
    assert_eq!(me["key"], key.api_key.as_str());
    assert_eq!(me["permissions"], json!(["read", "trade"]));
    assert!(me["actor"].as_str().unwrap().starts_with("user:u"));

    // The same request again inside the window is a replay.
    let r = signed_request(addr, &key, "GET", "/api/me", b"", now);
    assert_eq!(
        (r.status, error(&r)),
        (401, "signature already used (replay)".into())
    );

    // Stale and future timestamps; milliseconds are accepted too.
    for ts in [now - 31, now + 31] {
        let r = signed_request(addr, &key, "GET", "/api/me", b"", ts);
        assert_eq!(r.status, 401);
        assert!(
            error(&r).contains("outside the allowed window"),
            "{}",
            r.text()
        );
    }
    let r = signed_request(addr, &key, "GET", "/api/me?ms", b"", now * 1000 + 7);
    assert_eq!(r.status, 200, "{}", r.text());

    // A signature over something else: another body, another path, another secret.
    let ts = (now + 1).to_string();
    let sig = support::signature(
        &key.secret,
        "POST",
        "/api/alerts",
        &ts,
        br#"{"symbol":"BTC-USD","above":1}"#,
    );
    let r = request(
        addr,
        "POST",
        "/api/alerts",
        &[
            ("API-Key", &key.api_key),
            ("API-Timestamp", &ts),
            ("API-Signature", &sig),
        ],
        br#"{"symbol":"BTC-USD","above":2}"#,
    );
    assert_eq!((r.status, error(&r)), (401, "signature mismatch".into()));
    let sig = support::signature(&key.secret, "GET", "/api/me", &ts, b"");
    let r = request(
        addr,
        "GET",
        "/api/alerts",
        &[
            ("API-Key", &key.api_key),
            ("API-Timestamp", &ts),
            ("API-Signature", &sig),
        ],
        b"",
    );
    assert_eq!((r.status, error(&r)), (401, "signature mismatch".into()));
    let forged = support::ApiKey {
        api_key: key.api_key.clone(),
        secret: "0".repeat(64),
    };
    let r = signed_request(addr, &forged, "GET", "/api/me", b"", now + 2);
    assert_eq!((r.status, error(&r)), (401, "signature mismatch".into()));

    // Malformed or incomplete headers, unknown keys.
    let r = request(addr, "GET", "/api/me", &[("API-Key", &key.api_key)], b"");
    assert_eq!(r.status, 401);
    assert!(error(&r).contains("API-Key, API-Timestamp and API-Signature"));
    let r = request(
        addr,
        "GET",
        "/api/me",
        &[
            ("API-Key", &key.api_key),
            ("API-Timestamp", "soon"),
            ("API-Signature", "00"),
        ],
        b"",
    );
    assert_eq!(r.status, 401);
    let stranger = support::ApiKey {
        api_key: "mk_nobody".into(),
        secret: key.secret.clone(),
    };
    let r = signed_request(addr, &stranger, "GET", "/api/me", b"", now + 3);
    assert_eq!((r.status, error(&r)), (401, "unknown API key".into()));

    // A revoked key stops working at once.
    let (ok, out, err) = cli(dir.path(), &["keys", "revoke", &key.api_key], &[]);
    assert!(ok, "{out}{err}");
    let r = signed_request(addr, &key, "GET", "/api/me", b"", now + 4);
    assert_eq!((r.status, error(&r)), (401, "API key revoked".into()));
    let (ok, _, err) = cli(dir.path(), &["keys", "revoke", &key.api_key], &[]);
    assert!(!ok && err.contains("no active key"), "{err}");
    let (ok, out, _) = cli(dir.path(), &["keys", "list"], &[]);
    assert!(ok);
    let line = out.lines().find(|l| l.starts_with(&key.api_key)).unwrap();
    assert!(line.contains("revoked"), "{line}");
    assert!(
        !out.contains(&key.secret),
        "keys list must never show a secret"
    );
}

#[test]
fn read_only_keys_read_but_cannot_trade() {
    let (dir, mw) = started_app();
    let addr = mw.addr();
    let reader = create_key(dir.path(), "rita@example.com", "pw-rita", "read");
    let trader = create_key(dir.path(), "rita@example.com", "pw-rita", "read,trade");
    let now = unix_now();

    let r = signed_request(addr, &reader, "GET", "/api/me", b"", now);
    assert_eq!(
        (r.status, r.json()["permissions"].clone()),
        (200, json!(["read"]))
    );
    let r = signed_request(addr, &reader, "GET", "/api/alerts", b"", now);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = br#"{"symbol":"BTC-USD","above":1000000}"#;
    let r = signed_request(addr, &reader, "POST", "/api/alerts", body, now);
    assert_eq!((r.status, error(&r)), (403, "permission denied".into()));
    let r = signed_request(addr, &reader, "DELETE", "/api/alerts/1", b"", now);
    assert_eq!(r.status, 403);

    let r = signed_request(addr, &trader, "POST", "/api/alerts", body, now);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["alert"]["id"].as_i64().unwrap();
    // The reader's token carries the same read-only scope as its signed requests.
    let t = signed_request(addr, &reader, "POST", "/auth/token", b"", now + 1);
    assert_eq!(t.status, 200, "{}", t.text());
    let bearer = format!("Bearer {}", t.json()["token"].as_str().unwrap());
    let r = request(
        addr,
        "DELETE",
        &format!("/api/alerts/{id}"),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 403);
    let r = signed_request(
        addr,
        &trader,
        "DELETE",
        &format!("/api/alerts/{id}"),
        b"",
        now + 1,
    );
    assert_eq!((r.status, r.json()), (200, json!({"deleted": id})));
}

#[test]
fn basic_auth_and_the_token_exchange() {
    let dir = app_project();
    let mw = Moonwire::start(dir.path(), true);
    let demo = mw.demo_key();
    let addr = mw.addr();
    let (ok, out, err) = cli(
        dir.path(),
        &[
            "users",
            "create",
            "--email",
            "bob@example.com",
            "--role",
            "viewer",
        ],
        &[("MOONWIRE_PASSWORD", "s3cret-pw")],
    );
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(
        dir.path(),
        &[
            "users",
            "create",
            "--email",
            "BOB@example.com",
            "--password",
            "x",
        ],
        &[],
    );
    assert!(!ok && err.contains("already exists"), "{err}");

    let good = basic("bob@example.com", "s3cret-pw");
    let r = me(addr, &good);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["auth"], "basic");
    assert_eq!(r.json()["role"], "viewer");
    assert_eq!(r.json()["permissions"], json!(["read"]));
    for bad in [
        basic("bob@example.com", "s3cret-pW"),
        basic("nobody@example.com", "s3cret-pw"),
        "Basic !!!".to_string(),
    ] {
        let r = me(addr, &bad);
        assert_eq!(r.status, 401, "{bad}: {}", r.text());
    }
    let r = me(addr, "Digest x");
    assert_eq!(r.status, 401);
    let r = request(addr, "GET", "/api/me", &[], b"");
    assert_eq!(
        (r.status, error(&r)),
        (401, "authentication required".into())
    );

    // /auth/token takes Basic too, and the token carries the same identity.
    let r = request(
        addr,
        "POST",
        "/auth/token",
        &[("Authorization", &good)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["permissions"], json!(["read"]));
    let bearer = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let r = me(addr, &bearer);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["auth"], "token");
    assert_eq!(r.json()["role"], "viewer");
    let r = request(
        addr,
        "POST",
        "/auth/token",
        &[("Authorization", &basic("bob@example.com", "nope"))],
        b"",
    );
    assert_eq!(r.status, 401);

    // The tutorial's demo key keeps working; a key with a secret must sign instead.
    let t = support::token(addr, &demo);
    let r = me(addr, &format!("Bearer {t}"));
    assert_eq!(r.json()["user_id"], "demo");
    assert_eq!(r.json()["permissions"], json!(["read", "trade"]));
    let key = create_key(dir.path(), "bob@example.com", "unused", "read");
    let r = support::post_json(addr, "/auth/token", &json!({"api_key": key.api_key}));
    assert_eq!(r.status, 401);
    assert!(error(&r).contains("sign the request"), "{}", r.text());

    // Tokens of a revoked key die with it.
    let t = signed_request(addr, &key, "POST", "/auth/token", b"", unix_now());
    assert_eq!(t.status, 200, "{}", t.text());
    let bearer = format!("Bearer {}", t.json()["token"].as_str().unwrap());
    assert_eq!(me(addr, &bearer).status, 200);
    assert!(cli(dir.path(), &["keys", "revoke", &key.api_key], &[]).0);
    let r = me(addr, &bearer);
    assert_eq!((r.status, error(&r)), (401, "API key revoked".into()));
    let r = me(addr, "Bearer forged.token");
    assert_eq!(r.status, 401);
}

#[test]
fn internal_tokens_verify_without_a_store_and_survive_restarts() {
    let dir = app_project();
    let mut mw = Moonwire::start(dir.path(), true);
    mw.demo_key();
    let (ok, _, err) = cli(
        dir.path(),
        &[
            "users",
            "create",
            "--email",
            "svc@example.com",
            "--password",
            "pw",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(
        dir.path(),
        &[
            "tokens",
            "issue",
            "--user",
            "svc@example.com",
            "--ttl",
            "10m",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let token = out.trim().to_string();
    let parts: Vec<&str> = token.split(':').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let expiry: i64 = parts[1].parse().unwrap();
    assert!((expiry - unix_now() - 600).abs() <= 2);
    let bearer = |t: &str| format!("Bearer {t}");

    let r = me(mw.addr(), &bearer(&token));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["auth"], "internal");
    assert_eq!(r.json()["user_id"], parts[0]);

    // Tampering with any part breaks the signature.
    let other_user = format!("uffffffffffff:{}:{}", parts[1], parts[2]);
    let later = format!("{}:{}:{}", parts[0], expiry + 3600, parts[2]);
    let mut flipped = token.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    for t in [other_user, later, flipped] {
        let r = me(mw.addr(), &bearer(&t));
        assert_eq!(
            (r.status, error(&r)),
            (401, "internal token signature mismatch".into()),
            "{t}"
        );
    }
    let (ok, out, _) = cli(
        dir.path(),
        &[
            "tokens",
            "issue",
            "--user",
            "svc@example.com",
            "--ttl",
            "1s",
        ],
        &[],
    );
    assert!(ok);
    std::thread::sleep(Duration::from_millis(2100));
    let r = me(mw.addr(), &bearer(out.trim()));
    assert_eq!(
        (r.status, error(&r)),
        (401, "internal token expired".into())
    );

    // No store behind them: a restart keeps them valid; another key rejects them.
    assert!(mw.stop().success());
    let mw = Moonwire::start(dir.path(), true);
    let r = me(mw.addr(), &bearer(&token));
    assert_eq!(r.status, 200, "{}", r.text());
    drop(mw);
    let mw = Moonwire::start_with(
        dir.path(),
        true,
        &[("MOONWIRE_INTERNAL_TOKEN_KEY", "another-key")],
    );
    let r = me(mw.addr(), &bearer(&token));
    assert_eq!(r.status, 401);
}

#[test]
fn repeated_failures_are_answered_429() {
    let dir = app_project();
    let index = dir.path().join("registry/_index.yaml");
    let yaml = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        yaml.replace(
            "      api_auth.window: 30s\n",
            "      api_auth.window: 30s\n      api_auth.max_failures: 3\n",
        ),
    )
    .unwrap();
    let mw = Moonwire::start(dir.path(), true);
    let key = mw.demo_key();
    let addr = mw.addr();
    let wrong = basic("nobody@example.com", "guess");
    // Refusals by the middleware and by the token script both count.
    for _ in 0..2 {
        assert_eq!(me(addr, &wrong).status, 401);
    }
    assert_eq!(
        support::post_json(addr, "/auth/token", &json!({"api_key": "guess"})).status,
        401
    );
    let r = support::post_json(addr, "/auth/token", &json!({ "api_key": key }));
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(error(&r).contains("too many failed authentication attempts"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Public data stays reachable.
    assert_eq!(request(addr, "GET", "/api/ticker", &[], b"").status, 200);
}
