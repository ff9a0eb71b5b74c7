//! Issue 3 over real HTTP against `tests/fixtures/http_app` and `http_baseline`: handler
//! outcomes (raise, table, nothing, keep-alive after a failure), routing (params, `{rest...}`,
//! `:name`, prefix, HEAD, 404/405), response headers final once the body starts, `max_body`,
//! token stores (signed with a `${env:…}` key, unsigned, expiry, meta, revoke, forgery), token
//! placements, policies, baseline context and strict mode on `process.spawn`, CORS, static
//! files (SPA, traversal) and the body limit (answered even while the client is still sending).

mod support;

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::{field, fixture_project, post_json, request, HttpResponse, Moonwire};

const KEY: &str = "http-test-signing-key";

fn start() -> (tempfile::TempDir, Moonwire) {
    start_env(&[])
}

fn start_env(extra: &[(&str, &str)]) -> (tempfile::TempDir, Moonwire) {
    let dir = fixture_project("http_app");
    let mut env = vec![("HTTP_TEST_TOKEN_KEY", KEY)];
    env.extend_from_slice(extra);
    let mw = Moonwire::start_with(dir.path(), true, &env);
    (dir, mw)
}

/// A token the boot-time minter logged (`full`, `nospawn` or `empty`).
fn minted(mw: &Moonwire, kind: &str) -> String {
    let line = mw.wait_for(&format!("minted kind={kind} "), Duration::from_secs(10));
    field(&line, "token")
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(addr, "GET", path, headers, b"")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn whoami(addr: SocketAddr, headers: &[(&str, &str)]) -> Value {
    let r = get(addr, "/api/whoami", headers);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn actor_of(addr: SocketAddr, token: &str) -> String {
    whoami(addr, &[("Authorization", &bearer(token))])["actor"]
        .as_str()
        .unwrap()
        .to_string()
}

fn tokens(addr: SocketAddr, body: Value) -> Value {
    let r = post_json(addr, "/api/tokens", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn spawn(addr: SocketAddr, entry: &str, token: Option<&str>) -> Value {
    let auth = token.map(bearer);
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = request(
        addr,
        "POST",
        "/api/spawn",
        &headers,
        json!({ "entry": entry }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn sign(key: &str, base: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(base.as_bytes());
    URL_SAFE.encode(mac.finalize().into_bytes())
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads one response whose body length is given by Content-Length, leaving the connection open.
fn read_one(s: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection dropped mid-response"
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn handler_outcomes_map_to_json_answers() {
    let (_dir, mw) = start();
    let addr = mw.addr();

    // A returned table is the 200 JSON answer.
    let r = get(addr, "/api/echo/42?a=1&a=2&b=x%20y", &[("X-Thing", "t1")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .contains("application/json"));
    let b = r.json();
    assert_eq!(b["id"], "42");
    assert_eq!(b["params"], json!({"id": "42"}));
    assert_eq!(b["method"], "GET");
    assert_eq!(b["path"], "/api/echo/42");
    assert_eq!(b["query"], json!({"a": "1,2", "b": "x y"}));
    assert_eq!(b["thing"], "t1");

    // A raised error: 500 JSON with the message, and a log line naming the entry.
    let r = request(addr, "POST", "/api/raise", &[], b"");
    assert_eq!(r.status, 500);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("kaboom from handler"), "{err}");
    let line = mw.wait_for("kaboom from handler", Duration::from_secs(5));
    assert!(
        line.contains("t:raise"),
        "log line does not name the entry: {line}"
    );

    // A handler past its `max_memory`: 500 JSON naming the limit; the server keeps serving.
    let r = request(addr, "POST", "/api/hoard", &[], b"");
    assert_eq!(r.status, 500);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("memory limit exceeded"), "{err}");
    assert!(err.contains("t:hoard"), "{err}");
    mw.wait_for("memory limit exceeded", Duration::from_secs(5));
    assert_eq!(get(addr, "/api/echo/43", &[]).status, 200);

    // A non-string error value still yields a JSON error.
    let r = get(addr, "/api/raise-table", &[]);
    assert_eq!(r.status, 500);
    assert!(r.json()["error"].is_string());

    // `return nil, "msg"` is a failure.
    let r = get(addr, "/api/fail", &[]);
    assert_eq!(
        (r.status, r.json()),
        (500, json!({"error": "handler said no"}))
    );

    // Nothing written and nothing returned.
    let r = get(addr, "/api/nothing", &[]);
    assert_eq!(
        (r.status, r.json()),
        (500, json!({"error": "no response sent"}))
    );

    // A return value that cannot become JSON is a 500, not a dropped connection.
    let r = get(addr, "/api/unencodable", &[]);
    assert_eq!(r.status, 500);
    assert!(r.json()["error"].is_string());

    // Touched before the error: the response stands, the error is only logged.
    let r = get(addr, "/api/raise-after", &[]);
    assert_eq!((r.status, r.text().as_str()), (202, "partial"));
    mw.wait_for("late failure", Duration::from_secs(5));

    // Status and headers set by the handler; HEAD on a GET route sends them without a body.
    let r = get(addr, "/api/status", &[]);
    assert_eq!((r.status, r.text().as_str()), (201, "created"));
    assert_eq!(r.header("x-custom"), Some("yes"));
    let r = request(addr, "HEAD", "/api/status", &[], b"");
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert!(r.body.is_empty(), "HEAD sent a body: {:?}", r.text());
    assert_eq!(mw.count("panicked"), 0);
}

#[test]
fn an_unconvertible_return_value_is_reported() {
    let (_dir, mw) = start();
    let r = get(mw.addr(), "/api/unencodable", &[]);
    assert_eq!(r.status, 500);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert_ne!(err, "no response sent", "the handler did return a value");
    let line = mw.wait_for("t:unencodable", Duration::from_secs(5));
    assert!(line.contains("function"), "{line}");
}

#[test]
fn a_failing_handler_keeps_the_connection_alive() {
    let (_dir, mw) = start();
    let mut s = TcpStream::connect(mw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let host = mw.addr();
    for path in ["/api/raise", "/api/raise", "/api/echo/7"] {
        let method = if path == "/api/raise" { "POST" } else { "GET" };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let (status, body) = read_one(&mut s);
        let want = if method == "POST" { 500 } else { 200 };
        assert_eq!(status, want, "{path}: {body}");
        let _: Value = serde_json::from_str(&body).unwrap();
    }
}

#[test]
fn routing_params_rest_prefix_404_and_405() {
    let (_dir, mw) = start();
    let addr = mw.addr();

    // `:id` is rewritten to `{id}`; the method is case-insensitive in the registry.
    let r = get(addr, "/api/legacy/abc", &[]);
    assert_eq!((r.status, r.json()["id"].clone()), (200, json!("abc")));
    // Percent-encoded params are decoded.
    assert_eq!(get(addr, "/api/echo/a%20b", &[]).json()["id"], "a b");

    // A trailing wildcard takes the rest of the path and is not exposed as a param.
    let r = get(addr, "/api/files/a/b/c.txt", &[]);
    assert_eq!(
        (r.status, r.json()),
        (
            200,
            json!({"path": "/api/files/a/b/c.txt", "rest": "absent"})
        )
    );

    // The prefix `/api/` is trimmed to `/api`: the route lives under it and only there.
    assert_eq!(get(addr, "/echo/1", &[]).status, 404);
    assert_eq!(get(addr, "/api/echo/1/extra", &[]).status, 404);

    let r = get(addr, "/nope", &[]);
    assert_eq!((r.status, r.json()), (404, json!({"error": "not found"})));
    for method in ["DELETE", "POST", "PUT"] {
        let r = request(addr, method, "/api/echo/1", &[], b"");
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.json(), json!({"error": "method not allowed"}));
    }
    let r = get(addr, "/api/raise", &[]);
    assert_eq!(r.status, 405);
    // Each endpoint also answers OPTIONS (204) without running the handler.
    let r = request(addr, "OPTIONS", "/api/raise", &[], b"");
    assert_eq!(r.status, 204);
    assert_eq!(mw.count("kaboom"), 0);
}

#[test]
fn signed_tokens_use_the_env_key_and_reject_forgeries() {
    let (_dir, mw) = start();
    let addr = mw.addr();
    let full = minted(&mw, "full");

    // token_length 16 ⇒ 24 base64 chars; the signature is HMAC-SHA256 with the env key.
    let (base, sig) = full.split_once('.').unwrap();
    assert_eq!(base.len(), 24, "{full}");
    assert_eq!(URL_SAFE.decode(base).unwrap().len(), 16);
    assert_eq!(
        sig,
        sign(KEY, base),
        "not signed with ${{env:HTTP_TEST_TOKEN_KEY}}"
    );

    let who = whoami(addr, &[("Authorization", &bearer(&full))]);
    assert_eq!(who["actor"], "user:full");
    assert_eq!(who["role"], "full");
    assert_eq!(who["policies"], json!(["t:allow_all"]));
    assert_eq!(who["can_spawn_victim"], true);

    let mut flipped = full.clone().into_bytes();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let unknown_base = URL_SAFE.encode([9u8; 16]);
    let forgeries = [
        // Tampered base with the original signature.
        String::from_utf8(flipped).unwrap(),
        // Right base, signature made with another key.
        format!("{base}.{}", sign("not-the-key", base)),
        // Unsigned form of a signed token.
        base.to_string(),
        // Well signed but never issued.
        format!("{unknown_base}.{}", sign(KEY, &unknown_base)),
        format!("{full}.extra"),
        "garbage".to_string(),
    ];
    for bad in &forgeries {
        let who = whoami(addr, &[("Authorization", &bearer(bad))]);
        assert_eq!(who["actor"], "none", "accepted {bad}");
        assert_eq!(who["has_scope"], false);
        let v = tokens(addr, json!({"op": "validate", "token": bad}));
        assert_eq!(v["valid"], false, "{bad}");
        assert_eq!(v["kind"], "Internal");
        assert!(
            !v["error"].as_str().unwrap().contains(base),
            "an error message echoes the token: {v}"
        );
    }
    // The token itself never appears in a rejection log line.
    assert!(mw
        .logs()
        .iter()
        .filter(|l| !l.contains("minted"))
        .all(|l| !l.contains(base)));
}

#[test]
fn a_missing_env_key_stops_the_token_store_from_loading() {
    let dir = fixture_project("http_app");
    let mut mw = Moonwire::start_with(dir.path(), false, &[]);
    let line = mw.wait_for("HTTP_TEST_TOKEN_KEY", Duration::from_secs(10));
    assert!(
        line.contains("t:tokens") && line.contains("not set"),
        "{line}"
    );
    assert!(!mw.stop().success());
    assert_eq!(mw.count("listening"), 0);
}

#[test]
fn token_placements_header_query_cookie_and_custom_names() {
    let (_dir, mw) = start();
    let addr = mw.addr();
    let full = minted(&mw, "full");
    let empty = minted(&mw, "empty");

    assert_eq!(actor_of(addr, &full), "user:full");
    let q = format!("/api/whoami?x-auth-token={}", percent(&full));
    assert_eq!(get(addr, &q, &[]).json()["actor"], "user:full");
    let cookie = format!("theme=dark; x-auth-token={full}");
    assert_eq!(whoami(addr, &[("Cookie", &cookie)])["actor"], "user:full");
    // Header beats query beats cookie.
    let q = format!("/api/whoami?x-auth-token={}", percent(&empty));
    let r = get(
        addr,
        &q,
        &[("Authorization", &bearer(&full)), ("Cookie", &cookie)],
    );
    assert_eq!(r.json()["actor"], "user:full");
    let r = get(addr, &q, &[("Cookie", &cookie)]);
    assert_eq!(r.json()["actor"], "user:empty");
    // The prefix is case-sensitive.
    let lower = format!("bearer {full}");
    assert_eq!(whoami(addr, &[("Authorization", &lower)])["actor"], "none");

    // The alt router: unsigned store, X-Api-Token "Tok ", ?tok=, cookie `session`.
    let t = tokens(addr, json!({"op": "create", "store": "t:plain_tokens", "actor": "user:alt", "expiration": "10s"}))
        ["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!t.contains('.'), "unsigned tokens have no signature: {t}");
    assert_eq!(t.len(), 32, "token_length 24 ⇒ 32 base64 chars: {t}");
    let alt =
        |path: &str, headers: &[(&str, &str)]| get(addr, path, headers).json()["actor"].clone();
    let tok = format!("Tok {t}");
    assert_eq!(alt("/alt/whoami", &[("X-Api-Token", &tok)]), "user:alt");
    assert_eq!(
        alt(&format!("/alt/whoami?tok={}", percent(&t)), &[]),
        "user:alt"
    );
    assert_eq!(
        alt("/alt/whoami", &[("Cookie", &format!("session={t}"))]),
        "user:alt"
    );
    // The defaults do not apply on a router that renamed them.
    assert_eq!(
        alt("/alt/whoami", &[("Authorization", &bearer(&t))]),
        "none"
    );
    assert_eq!(alt("/alt/whoami", &[("X-Api-Token", &bearer(&t))]), "none");
    assert_eq!(
        alt(&format!("/alt/whoami?x-auth-token={}", percent(&t)), &[]),
        "none"
    );
    // A token from one store means nothing to another.
    assert_eq!(
        alt("/alt/whoami", &[("X-Api-Token", &format!("Tok {full}"))]),
        "none"
    );
}

#[test]
fn expiry_per_token_default_and_record_meta() {
    let (_dir, mw) = start();
    let addr = mw.addr();

    // Per-token expiration on the signed store, as a duration string and as milliseconds.
    let short = tokens(
        addr,
        json!({"op": "create", "actor": "user:short", "expiration": "200ms"}),
    );
    let short = short["token"].as_str().unwrap().to_string();
    let ms = tokens(
        addr,
        json!({"op": "create", "actor": "user:ms", "expiration": 200}),
    );
    let ms = ms["token"].as_str().unwrap().to_string();
    // The store default (300 ms) and an explicit longer expiration on the unsigned store.
    let dflt = tokens(
        addr,
        json!({"op": "create", "store": "t:plain_tokens", "actor": "user:dflt"}),
    );
    let dflt = dflt["token"].as_str().unwrap().to_string();
    let long = tokens(
        addr,
        json!({"op": "create", "store": "t:plain_tokens", "actor": "user:long", "expiration": "5s",
               "meta": {"ip": "10.0.0.1", "n": 3}, "actor_meta": {"role": "tester"},
               "policies": ["t:allow_all", "t:nope"]}),
    );
    let long = long["token"].as_str().unwrap().to_string();

    assert_eq!(actor_of(addr, &short), "user:short");
    assert_eq!(actor_of(addr, &ms), "user:ms");
    let v = tokens(
        addr,
        json!({"op": "validate", "store": "t:plain_tokens", "token": long}),
    );
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(
        (v["actor"].clone(), v["role"].clone()),
        (json!("user:long"), json!("tester"))
    );
    assert_eq!(
        v["policies"],
        json!(["t:allow_all"]),
        "unknown policy IDs are dropped"
    );

    // The record under B: actor, scope policy IDs, created/expires, and the token's meta.
    let base = short.split_once('.').unwrap().0;
    let rec = tokens(addr, json!({"op": "record", "base": base}));
    assert_eq!(rec["actor_id"], "user:short");
    assert_eq!(
        rec["expires"].as_i64().unwrap() - rec["created"].as_i64().unwrap(),
        200
    );
    let rec = tokens(addr, json!({"op": "record", "base": dflt}));
    assert_eq!(
        rec["expires"].as_i64().unwrap() - rec["created"].as_i64().unwrap(),
        300
    );
    let rec = tokens(addr, json!({"op": "record", "base": long}));
    assert_eq!(
        rec["expires"].as_i64().unwrap() - rec["created"].as_i64().unwrap(),
        5000
    );
    assert_eq!(rec["meta"], json!({"ip": "10.0.0.1", "n": 3}));
    assert_eq!(rec["scope_policies"], json!(["t:allow_all"]));

    // Bad expirations are INVALID and mint nothing.
    for bad in [json!(-1), json!("-5s"), json!("soon")] {
        let r = tokens(addr, json!({"op": "create", "expiration": bad}));
        assert_eq!(r["kind"], "Invalid", "{bad}: {r}");
    }

    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(actor_of(addr, &short), "none", "expired token accepted");
    assert_eq!(actor_of(addr, &ms), "none", "expired token accepted");
    let v = tokens(
        addr,
        json!({"op": "validate", "store": "t:plain_tokens", "token": dflt}),
    );
    assert_eq!(
        (v["valid"].clone(), v["kind"].clone()),
        (json!(false), json!("Internal"))
    );
    let v = tokens(addr, json!({"op": "validate", "token": short}));
    assert_eq!(v["valid"], false);
    let v = tokens(
        addr,
        json!({"op": "validate", "store": "t:plain_tokens", "token": long}),
    );
    assert_eq!(
        v["valid"], true,
        "a per-token expiration beats the store default: {v}"
    );
}

#[test]
fn revoked_tokens_stop_working() {
    let (_dir, mw) = start();
    let addr = mw.addr();
    let t = tokens(
        addr,
        json!({"op": "create", "actor": "user:rev", "policies": ["t:allow_all"]}),
    );
    let t = t["token"].as_str().unwrap().to_string();
    let other = tokens(addr, json!({"op": "create", "actor": "user:other"}));
    let other = other["token"].as_str().unwrap().to_string();
    assert_eq!(actor_of(addr, &t), "user:rev");

    assert_eq!(
        tokens(addr, json!({"op": "revoke", "token": t})),
        json!({"revoked": true})
    );
    assert_eq!(actor_of(addr, &t), "none", "revoked token accepted");
    let v = tokens(addr, json!({"op": "validate", "token": t}));
    assert_eq!(
        (v["valid"].clone(), v["kind"].clone()),
        (json!(false), json!("Internal"))
    );
    let again = tokens(addr, json!({"op": "revoke", "token": t}));
    assert_eq!(
        (again["revoked"].clone(), again["kind"].clone()),
        (json!(false), json!("Internal"))
    );
    let bad = tokens(addr, json!({"op": "revoke", "token": ""}));
    assert_eq!(bad["revoked"], false);
    // Revoking one token leaves the others alone.
    assert_eq!(actor_of(addr, &other), "user:other");
}

#[test]
fn spawn_permissions_use_the_callers_scope() {
    let (_dir, mw) = start();
    let addr = mw.addr();
    let full = minted(&mw, "full");
    let nospawn = minted(&mw, "nospawn");
    let empty = minted(&mw, "empty");

    // Permissive mode, no actor: allowed, and the child has no identity.
    let r = spawn(addr, "t:victim", None);
    assert_eq!(
        (r["ok"].clone(), r["child_actor"].clone()),
        (json!(true), json!("none"))
    );
    // The child inherits the caller's actor.
    let r = spawn(addr, "t:victim", Some(&full));
    assert_eq!(
        (r["ok"].clone(), r["child_actor"].clone()),
        (json!(true), json!("user:full"))
    );
    // A deny policy in the caller's scope blocks exactly that entry.
    let r = spawn(addr, "t:victim", Some(&nospawn));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["kind"], "PermissionDenied");
    let r = spawn(addr, "t:bystander", Some(&nospawn));
    assert_eq!(
        (r["ok"].clone(), r["child_actor"].clone()),
        (json!(true), json!("user:nospawn"))
    );
    let who = whoami(addr, &[("Authorization", &bearer(&nospawn))]);
    assert_eq!(
        (who["can_spawn_victim"].clone(), who["can_other"].clone()),
        (json!(false), json!(true))
    );
    // An empty scope denies everything, even in permissive mode.
    let r = spawn(addr, "t:bystander", Some(&empty));
    assert_eq!(r["kind"], "PermissionDenied", "{r}");
    // security.can is false without an actor and scope.
    let who = whoami(addr, &[]);
    assert_eq!(
        (who["can_spawn_victim"].clone(), who["can_other"].clone()),
        (json!(false), json!(false))
    );
}

#[test]
fn strict_mode_denies_checks_without_a_context() {
    let (_dir, mw) = start_env(&[("MOONWIRE_STRICT_MODE", "true")]);
    let addr = mw.addr();
    let full = minted(&mw, "full");
    let nospawn = minted(&mw, "nospawn");

    let r = spawn(addr, "t:victim", None);
    assert_eq!(
        (r["ok"].clone(), r["kind"].clone()),
        (json!(false), json!("PermissionDenied"))
    );
    // Token stores need a context too in strict mode.
    let r = tokens(addr, json!({"op": "validate", "token": full}));
    assert_eq!(r["kind"], "Invalid", "{r}");
    // With a token the caller's scope decides, as in permissive mode.
    let r = spawn(addr, "t:victim", Some(&full));
    assert_eq!(
        (r["ok"].clone(), r["child_actor"].clone()),
        (json!(true), json!("user:full"))
    );
    let r = spawn(addr, "t:victim", Some(&nospawn));
    assert_eq!(r["kind"], "PermissionDenied");
    // Handlers that check nothing still run.
    assert_eq!(get(addr, "/api/echo/1", &[]).status, 200);
}

#[test]
fn cors_preflight_and_decoration() {
    let (_dir, mw) = start();
    let addr = mw.addr();
    let preflight = |origin: &str| {
        request(
            addr,
            "OPTIONS",
            "/api/echo/1",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "Authorization"),
            ],
            b"",
        )
    };
    for origin in [
        "https://good.example",
        "https://a.trusted.example",
        "http://b.c.trusted.example",
    ] {
        let r = preflight(origin);
        assert_eq!(r.status, 204, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert!(r
            .header("access-control-allow-methods")
            .unwrap()
            .contains("GET"));
        assert!(r
            .header("access-control-allow-headers")
            .unwrap()
            .contains("Authorization"));
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert!(r.header("vary").unwrap().contains("Origin"));
        assert!(r.body.is_empty());
    }
    // Disallowed origins pass through untouched (the automatic OPTIONS route answers 204).
    for origin in [
        "https://evil.example",
        "https://trusted.example",
        "http://good.example",
    ] {
        let r = preflight(origin);
        assert_eq!(r.status, 204, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
    }
    // Actual requests from an allowed origin are decorated; others are not.
    let r = get(addr, "/api/echo/1", &[("Origin", "https://good.example")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://good.example")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("X-Custom"));
    assert!(r.header("vary").unwrap().contains("Origin"));
    // Even an error answer carries the CORS headers, so the browser can read it.
    let r = request(
        addr,
        "POST",
        "/api/raise",
        &[("Origin", "https://good.example")],
        b"",
    );
    assert_eq!(r.status, 500);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://good.example")
    );
    let r = get(addr, "/api/echo/1", &[("Origin", "https://evil.example")]);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // The router without cors never adds the headers.
    let r = get(addr, "/alt/whoami", &[("Origin", "https://good.example")]);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn static_files_spa_fallback_and_traversal() {
    let (_dir, mw) = start();
    let addr = mw.addr();
    let index =
        std::fs::read_to_string(support::repo().join("tests/fixtures/http_app/www/index.html"))
            .unwrap();

    for path in [
        "/site",
        "/site/",
        "/site/deep/client/route",
        "/site/missing.js",
        "/site/sub/",
    ] {
        let r = get(addr, path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), index, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with("text/html"),
            "{path}"
        );
    }
    let r = get(addr, "/site/app.js", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().contains("javascript"));

    // Without the SPA: misses are 404, directories are never listed.
    assert_eq!(get(addr, "/plain/missing.js", &[]).status, 404);
    let r = get(addr, "/plain/sub/", &[]);
    assert_eq!(r.status, 404);
    assert!(
        !r.text().contains("note.txt"),
        "directory listed: {}",
        r.text()
    );
    let r = get(addr, "/plain/sub/note.txt", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    let len = r.body.len();
    let r = request(addr, "HEAD", "/plain/sub/note.txt", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
    assert!(r.body.is_empty());
    let r = get(addr, "/plain/sub/note.txt", &[("Range", "bytes=0-5")]);
    assert_eq!((r.status, r.text().as_str()), (206, "a note"));

    // `www` lives inside `registry/`, so one `..` would reach `_index.yaml`.
    for mount in ["/site", "/plain", "/plain/sub"] {
        for evil in [
            "/../_index.yaml",
            "/%2e%2e/_index.yaml",
            "/..%2f_index.yaml",
            "/%2e%2e%2f_index.yaml",
            "/..%5c_index.yaml",
            "/%5c..%5c_index.yaml",
            "/..\\_index.yaml",
            "/./../_index.yaml",
            "/../../registry/_index.yaml",
            "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/sub/../../_index.yaml",
            "/%252e%252e/_index.yaml",
            "/..%00/_index.yaml",
        ] {
            let path = format!("{mount}{evil}");
            let r = get(addr, &path, &[]);
            let text = r.text();
            assert!(
                !text.contains("namespace: t") && !text.contains("root:"),
                "{path} escaped the folder ({})",
                r.status
            );
            if mount != "/site" {
                assert!(r.status >= 400, "{path} answered {}", r.status);
            }
        }
    }
    assert_eq!(mw.count("panicked"), 0);
}

#[test]
fn body_limit_applies_with_and_without_content_length() {
    let (_dir, mw) = start();
    let addr = mw.addr();

    let ok = vec![b'x'; 512 * 1024];
    let r = request(addr, "POST", "/api/body", &[], &ok);
    assert_eq!((r.status, r.json()), (200, json!({"len": 512 * 1024})));

    let big = vec![b'x'; 2 << 20];
    let r = request(addr, "POST", "/api/body", &[], &big);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string());

    // A client that is still sending its oversized body when the 413 is decided must be able
    // to finish and read the answer (no reset while it writes).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/body HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for (i, chunk) in big.chunks(64 * 1024).enumerate() {
        s.write_all(chunk)
            .unwrap_or_else(|e| panic!("connection reset after {i} chunks: {e}"));
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );

    // Chunked, no Content-Length: the limit still applies while reading.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/body HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'y'; 64 * 1024];
    for _ in 0..24 {
        if write!(s, "{:x}\r\n", chunk.len()).is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let head = String::from_utf8_lossy(&raw);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("\"error\""), "{head}");
    // The handler never ran for the oversized bodies.
    assert_eq!(mw.count("panicked"), 0);
}

#[test]
fn baseline_context_applies_until_a_token_replaces_it() {
    for strict in [false, true] {
        let dir = fixture_project("http_baseline");
        let env: &[(&str, &str)] = if strict {
            &[("MOONWIRE_STRICT_MODE", "true")]
        } else {
            &[]
        };
        let mw = Moonwire::start_with(dir.path(), true, env);
        let addr = mw.addr();
        // No token: the http.service's lifecycle.security, whose scope forbids spawning.
        let r = get(addr, "/probe", &[]);
        assert_eq!(
            (r.status, r.json()),
            (
                200,
                json!({"actor": "svc:anon", "kind": "baseline", "spawn": "PermissionDenied"})
            ),
            "strict={strict}"
        );
        // The baseline is allowed to mint; the token's context then replaces the baseline.
        let t = request(addr, "POST", "/mint", &[], b"").json()["token"]
            .as_str()
            .unwrap_or_else(|| panic!("strict={strict}: no token"))
            .to_string();
        let r = get(addr, "/probe", &[("Authorization", &bearer(&t))]);
        assert_eq!(
            r.json(),
            json!({"actor": "user:minted", "kind": "none", "spawn": "ok", "child_actor": "user:minted"}),
            "strict={strict}"
        );
        // A bad token leaves the baseline in place.
        let r = get(addr, "/probe", &[("Authorization", "Bearer nope")]);
        assert_eq!(r.json()["actor"], "svc:anon", "strict={strict}");
    }
}

#[test]
fn headers_are_final_once_the_body_starts() {
    let (_dir, mw) = start();
    let r = get(mw.addr(), "/api/late-header", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "body;Invalid,Invalid,Invalid");
    assert_eq!(r.header("x-early"), Some("1"));
    assert_eq!(
        r.header("x-late"),
        None,
        "a header set after the body was sent"
    );
    assert_ne!(r.header("content-type"), Some("text/x-late"));
}

#[test]
fn request_max_body_option_and_repeated_headers() {
    let (_dir, mw) = start();
    let addr = mw.addr();
    let small = request(addr, "POST", "/api/small-body", &[], b"[1,2,3]");
    assert_eq!(
        small.json(),
        json!({"len": 7, "body_err": "none", "json_err": "none"})
    );
    let big = request(addr, "POST", "/api/small-body", &[], &[b'7'; 100]);
    assert_eq!(
        big.json(),
        json!({"len": -1, "body_err": "Invalid", "json_err": "Invalid"})
    );
    // Repeated request headers are joined with ", ".
    let r = get(addr, "/api/echo/1", &[("X-Thing", "a"), ("x-thing", "b")]);
    assert_eq!(r.json()["thing"], "a, b");
}

/// A keep-alive connection that has been served once (so the server has accepted it).
fn served_keep_alive(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET /api/ticker HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s
}

/// Whether a new connection is closed by the server without an answer.
fn refused(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(format!("GET /api/ticker HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        // Closed with our request unread: the kernel resets instead of a clean EOF.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e) => panic!("neither an answer nor a close within 5 s: {e}"),
    }
}

#[test]
fn the_connection_limit_refuses_extra_connections_until_one_closes() {
    let dir = support::app_project();
    let index = dir.path().join("registry/_index.yaml");
    let yaml = std::fs::read_to_string(&index).unwrap();
    let yaml = yaml.replace(
        "    kind: http.service\n    addr: \":8081\"\n",
        "    kind: http.service\n    addr: \":8081\"\n    host:\n      max_connections: 3\n",
    );
    assert!(yaml.contains("max_connections: 3"));
    std::fs::write(&index, yaml).unwrap();
    let mw = Moonwire::start(dir.path(), true);
    let addr = mw.addr();
    let key = mw.demo_key();
    let token = support::token(addr, &key);
    let mut open: Vec<TcpStream> = (0..3).map(|_| served_keep_alive(addr)).collect();
    assert!(refused(addr), "a fourth connection must be refused");
    mw.wait_for("connection limit reached", Duration::from_secs(5));
    open.pop();
    // The server notices the close on its next read; give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let third = loop {
        if let Ok(s) = std::panic::catch_unwind(|| served_keep_alive(addr)) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed slot never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(third);
    std::thread::sleep(Duration::from_millis(200));
    // A WebSocket counts as one connection, before and after its upgrade.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!(
        "ws://{addr}/ws/ticker?x-auth-token={}",
        support::urlencode(&token)
    );
    let ws = rt
        .block_on(tokio_tungstenite::connect_async(url.as_str()))
        .unwrap()
        .0;
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        refused(addr),
        "two keep-alives and a WebSocket fill the limit"
    );
    drop(ws);
    drop(rt);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refused(addr) {
        assert!(
            std::time::Instant::now() < deadline,
            "the WebSocket's slot never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
