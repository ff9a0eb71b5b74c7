//! `api_auth`: every way a caller of `/api/*` proves who it is, checked in one place so no
//! script re-implements authentication. In order of precedence:
//!
//! 1. signed requests — `API-Key`, `API-Timestamp`, `API-Signature` (see
//!    [`crate::security::request_signing`]);
//! 2. `Authorization: Basic` — email and password against the users table (Argon2id);
//! 3. `Authorization: Bearer` — an internal `user:expiry:hmac` token, else a token-store token
//!    from `/auth/token`.
//!
//! A request without credentials passes through anonymous (public endpoints decide); a request
//! with credentials that do not hold is answered 401 here with the reason. A successful caller
//! gets actor `user:<id>` (meta: `user_id`, `role`, `permissions`, `auth`, `key`) and a scope
//! of the policies its permissions map to (`api_auth.policy.<permission>`), so endpoints ask
//! `security.can("api.trade", …)` instead of comparing strings.
//!
//! Options (router `options`): `api_auth.db` (required), `api_auth.token_store`,
//! `api_auth.policy.read`, `api_auth.policy.trade`, `api_auth.window` (`30s`),
//! `api_auth.secret_key` (master key API-key secrets are derived under),
//! `api_auth.internal_key` (key of internal tokens; empty refuses them),
//! `api_auth.max_failures` (`30`: refused requests per address per minute before 429s).

use crate::http::middleware::auth_limiter::AuthLimiter;
use crate::http::server::{error_response, Body};
use crate::registry::kinds::EntryId;
use crate::runtime::Node;
use crate::security::accounts::{self, KeyRecord};
use crate::security::request_signing::{self, ReplayGuard, SignatureError};
use crate::security::{internal_token, password, unix_now, Actor, SecurityContext};
use base64::Engine as _;
use hyper::http::request::Parts;
use hyper::HeaderMap;
use hyper::{Response, StatusCode};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

const DEFAULT_WINDOW_SECS: i64 = 30;
const DEFAULT_MAX_FAILURES: u32 = 30;
const SIGNATURE_HEADERS: [&str; 3] = ["api-key", "api-timestamp", "api-signature"];
const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Signatures seen recently. Process-wide rather than per router so a registry reload, which
/// rebuilds every route chain, cannot reopen the replay window.
static REPLAYS: LazyLock<ReplayGuard> = LazyLock::new(ReplayGuard::default);

#[derive(Clone)]
pub struct ApiAuth {
    db: EntryId,
    token_store: Option<EntryId>,
    /// Permission name → the policy granting it.
    policies: Vec<(String, EntryId)>,
    window: i64,
    secret_key: Arc<[u8]>,
    internal_key: Option<Arc<[u8]>>,
    /// Shared by the chains built from one registry load; a reload starts it afresh.
    limiter: Arc<AuthLimiter>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field("db", &self.db)
            .field("token_store", &self.token_store)
            .field("policies", &self.policies)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// What the middleware concluded about a request.
enum AuthOutcome {
    /// No credentials at all.
    Anonymous,
    Authenticated(SecurityContext),
    /// Credentials were presented and refused: answer 401 with this reason.
    Refused(String),
}

fn refused(reason: impl std::fmt::Display) -> AuthOutcome {
    AuthOutcome::Refused(reason.to_string())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

impl ApiAuth {
    /// `None` when `api_auth.db` is missing (the registry loader reports that). References
    /// arrive fully qualified from the loader.
    pub fn from_options(opts: &BTreeMap<String, String>, namespace: &str) -> Option<ApiAuth> {
        let db = EntryId::resolve(opts.get("api_auth.db")?, namespace)?;
        let token_store = opts
            .get("api_auth.token_store")
            .and_then(|s| EntryId::resolve(s, namespace));
        let policies = opts
            .iter()
            .filter_map(|(k, v)| {
                let perm = k.strip_prefix("api_auth.policy.")?;
                Some((perm.to_string(), EntryId::resolve(v, namespace)?))
            })
            .collect();
        let window = opts
            .get("api_auth.window")
            .and_then(|w| crate::registry::duration::parse(w).ok())
            .map(|d| d.as_secs() as i64)
            .filter(|w| *w > 0)
            .unwrap_or(DEFAULT_WINDOW_SECS);
        let key = |name: &str| {
            opts.get(name)
                .filter(|k| !k.is_empty())
                .map(|k| Arc::<[u8]>::from(k.as_bytes()))
        };
        Some(ApiAuth {
            db,
            token_store,
            policies,
            window,
            secret_key: key("api_auth.secret_key").unwrap_or_else(|| Arc::from(&b""[..])),
            internal_key: key("api_auth.internal_key"),
            limiter: Arc::new(AuthLimiter::new(
                opts.get("api_auth.max_failures")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(DEFAULT_MAX_FAILURES),
                FAILURE_WINDOW,
            )),
        })
    }

    pub fn db(&self) -> &EntryId {
        &self.db
    }

    /// The master key API-key secrets are derived under (shared with `moonwire keys`).
    pub fn secret_key(&self) -> &[u8] {
        &self.secret_key
    }

    pub fn internal_key(&self) -> Option<&[u8]> {
        self.internal_key.as_deref()
    }

    /// Whether the request presents any credential this middleware reads.
    pub fn carries_credentials(headers: &HeaderMap) -> bool {
        SIGNATURE_HEADERS.iter().any(|h| headers.contains_key(*h))
            || headers.contains_key(hyper::header::AUTHORIZATION)
    }

    /// The middleware for one request: `Ok(Some)` authenticated, `Ok(None)` anonymous, `Err`
    /// the answer it gives itself (401 with the reason, or 429 for an address that failed too
    /// often). A blocked address may still read public data: only attempts that could be
    /// guesses (credentials, or a body such as `/auth/token`'s) are held back.
    pub async fn admit(
        &self,
        node: &Node,
        peer: IpAddr,
        parts: &Parts,
        body: &[u8],
    ) -> Result<Option<SecurityContext>, Response<Body>> {
        let may_guess = !matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD)
            || Self::carries_credentials(&parts.headers);
        if may_guess {
            if let Some(secs) = self.limiter.retry_after(peer, std::time::Instant::now()) {
                let mut r = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentication attempts; retry later",
                );
                r.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, secs.into());
                return Err(r);
            }
        }
        match self.authenticate(node, parts, body).await {
            AuthOutcome::Anonymous => Ok(None),
            AuthOutcome::Authenticated(ctx) => Ok(Some(ctx)),
            AuthOutcome::Refused(reason) => {
                tracing::info!(peer = %peer, path = %parts.uri.path(), reason = %reason, "api_auth refused a request");
                self.observe(peer, StatusCode::UNAUTHORIZED);
                Err(error_response(StatusCode::UNAUTHORIZED, &reason))
            }
        }
    }

    /// Counts a 401, the middleware's or a handler's own (an unknown key on `/auth/token`),
    /// against the address.
    pub fn observe(&self, peer: IpAddr, status: StatusCode) {
        if status == StatusCode::UNAUTHORIZED {
            self.limiter.record_failure(peer, std::time::Instant::now());
        }
    }

    async fn authenticate(&self, node: &Node, parts: &Parts, body: &[u8]) -> AuthOutcome {
        let headers = &parts.headers;
        if SIGNATURE_HEADERS.iter().any(|h| headers.contains_key(*h)) {
            return self.signed(node, parts, body).await;
        }
        let Some(authorization) = header(headers, "authorization") else {
            return AuthOutcome::Anonymous;
        };
        let (scheme, credentials) = authorization
            .split_once(' ')
            .map(|(s, c)| (s, c.trim()))
            .unwrap_or((authorization, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            self.basic(node, credentials).await
        } else if scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty() {
            self.bearer(node, credentials).await
        } else {
            refused("unsupported Authorization scheme (use Bearer, Basic or a signed request)")
        }
    }

    fn context(
        &self,
        node: &Node,
        user_id: &str,
        role: &str,
        permissions: &[String],
        auth: &str,
        key: Option<&str>,
    ) -> SecurityContext {
        let mut meta = serde_json::Map::new();
        meta.insert("user_id".into(), user_id.into());
        meta.insert("role".into(), role.into());
        meta.insert("permissions".into(), permissions.into());
        meta.insert("auth".into(), auth.into());
        if let Some(k) = key {
            meta.insert("key".into(), k.into());
        }
        let ids: Vec<EntryId> = permissions
            .iter()
            .filter_map(|p| self.policies.iter().find(|(name, _)| name == p))
            .map(|(_, id)| id.clone())
            .collect();
        let scope = node.snapshot().policies.scope_from_ids(&ids);
        SecurityContext::new(
            Some(Actor::new(format!("user:{user_id}"), meta)),
            Some(scope),
        )
    }

    fn open_db(&self, node: &Node) -> Result<Arc<crate::store::sqlite::Sqlite>, AuthOutcome> {
        node.db(&self.db).ok_or_else(|| {
            tracing::error!(db = %self.db, "api_auth: database unavailable");
            refused("authentication unavailable")
        })
    }

    async fn key(&self, node: &Node, api_key: &str) -> Result<KeyRecord, AuthOutcome> {
        let db = self.open_db(node)?;
        match accounts::find_key(&db, api_key).await {
            Ok(Some(k)) if k.is_revoked() => Err(refused("API key revoked")),
            Ok(Some(k)) => Ok(k),
            Ok(None) => Err(refused("unknown API key")),
            Err(e) => {
                tracing::error!(error = %e, "api_auth: key lookup failed");
                Err(refused("authentication unavailable"))
            }
        }
    }

    async fn signed(&self, node: &Node, parts: &Parts, body: &[u8]) -> AuthOutcome {
        let headers = &parts.headers;
        // Signed over the request target exactly as sent.
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
        let (Some(api_key), Some(ts_text), Some(signature)) = (
            header(headers, "api-key"),
            header(headers, "api-timestamp"),
            header(headers, "api-signature"),
        ) else {
            return refused("signed requests need API-Key, API-Timestamp and API-Signature");
        };
        let now = unix_now();
        let ts = match request_signing::parse_timestamp(ts_text)
            .and_then(|ts| request_signing::check_window(ts, now, self.window).map(|_| ts))
        {
            Ok(ts) => ts,
            Err(e) => return refused(e),
        };
        let key = match self.key(node, api_key).await {
            Ok(k) => k,
            Err(outcome) => return outcome,
        };
        let Some(secret) = key.secret(&self.secret_key) else {
            return refused("this API key has no signing secret");
        };
        let canonical =
            request_signing::canonical(parts.method.as_str(), path_and_query, ts_text, body);
        let mac = match request_signing::verify(secret.as_bytes(), &canonical, signature) {
            Ok(mac) => mac,
            Err(e) => return refused(e),
        };
        if let Err(e) = REPLAYS.remember(mac, ts + self.window, now) {
            debug_assert_eq!(e, SignatureError::Replayed);
            tracing::warn!(key = %key.api_key, "api_auth: replayed signature refused");
            return refused(e);
        }
        AuthOutcome::Authenticated(self.context(
            node,
            &key.user_id,
            &key.role,
            &key.permissions,
            "signature",
            Some(&key.api_key),
        ))
    }

    async fn basic(&self, node: &Node, credentials: &str) -> AuthOutcome {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some((email, pass)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return refused("malformed Basic credentials");
        };
        let db = match self.open_db(node) {
            Ok(db) => db,
            Err(outcome) => return outcome,
        };
        let user = match accounts::find_user_by_email(&db, email).await {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "api_auth: user lookup failed");
                return refused("authentication unavailable");
            }
        };
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        let pass = pass.to_string();
        // Argon2 takes tens of milliseconds of CPU: off the worker, whose other processes
        // would stall behind it.
        let ok = tokio::task::spawn_blocking(move || match stored {
            Some(hash) => password::verify(&pass, &hash),
            None => {
                password::dummy_verify(&pass);
                false
            }
        })
        .await
        .unwrap_or(false);
        match user {
            Some(u) if ok => {
                let perms = accounts::role_permissions(&u.role);
                AuthOutcome::Authenticated(
                    self.context(node, &u.id, &u.role, &perms, "basic", None),
                )
            }
            _ => refused("invalid email or password"),
        }
    }

    async fn bearer(&self, node: &Node, token: &str) -> AuthOutcome {
        if internal_token::looks_internal(token) {
            let Some(key) = &self.internal_key else {
                return refused("internal tokens are not accepted here");
            };
            return match internal_token::verify(key, token, unix_now()) {
                Ok((user, _)) => {
                    let perms = accounts::role_permissions("user");
                    AuthOutcome::Authenticated(
                        self.context(node, &user, "internal", &perms, "internal", None),
                    )
                }
                Err(e) => refused(e),
            };
        }
        let Some(store_id) = &self.token_store else {
            return refused("bearer tokens are not accepted here");
        };
        let Some(store) = node.token_store(store_id) else {
            return refused("authentication unavailable");
        };
        let (actor, scope) = match store.validate(token, &node.snapshot().policies) {
            Ok(x) => x,
            Err(_) => return refused("invalid or expired token"),
        };
        // A token outlives nothing it was issued for: revoking the key ends its tokens too.
        if let Some(api_key) = actor.meta.get("key").and_then(|k| k.as_str()) {
            if let Err(outcome) = self.key(node, api_key).await {
                return outcome;
            }
        }
        AuthOutcome::Authenticated(SecurityContext::new(Some(actor), Some(scope)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_resolve_in_the_router_namespace() {
        let mut o = BTreeMap::new();
        o.insert("api_auth.db".to_string(), "db".to_string());
        o.insert(
            "api_auth.policy.read".to_string(),
            "read_policy".to_string(),
        );
        o.insert("api_auth.window".to_string(), "10s".to_string());
        let a = ApiAuth::from_options(&o, "app").unwrap();
        assert_eq!(a.db, EntryId::new("app", "db"));
        assert_eq!(
            a.policies,
            vec![("read".to_string(), EntryId::new("app", "read_policy"))]
        );
        assert_eq!(a.window, 10);
        assert!(a.internal_key.is_none());
        o.remove("api_auth.db");
        assert!(ApiAuth::from_options(&o, "app").is_none());
    }
}
