//! `security.token_store`: opaque bearer tokens recorded in a memory store (§7.5).
//!
//! A token is `B` (base64url, padded, of `token_length` random bytes) or, with a key,
//! `B.base64url(HMAC-SHA256(key, B))`. The record under `B` holds the actor, the scope's policy
//! IDs and the expiry; validation rebuilds the scope from the registry current at that time.

use crate::process::value::Value;
use crate::registry::kinds::{self, EntryId};
use crate::security::{Actor, PolicySet, Scope};
use crate::store::memory::{MemoryStore, StoreError};
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

#[derive(thiserror::Error, Debug)]
pub enum TokenError {
    /// Malformed token or bad signature. The message never contains the token.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("token not found")]
    NotFound,
    #[error("token expired")]
    Expired,
    #[error("invalid token record: {0}")]
    Corrupt(&'static str),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
}

/// One token store entry, bound to its running backing store.
pub struct TokenStore {
    store: Arc<MemoryStore>,
    token_length: usize,
    default_expiration: Duration,
    /// `None` = unsigned tokens.
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: only whether there is one.
        f.debug_struct("TokenStore")
            .field("token_length", &self.token_length)
            .field("default_expiration", &self.default_expiration)
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    pub fn new(cfg: &kinds::TokenStore, store: Arc<MemoryStore>) -> Self {
        TokenStore {
            store,
            token_length: cfg.token_length.max(1),
            default_expiration: cfg.default_expiration,
            key: (!cfg.token_key.is_empty()).then(|| cfg.token_key.as_bytes().to_vec()),
        }
    }

    pub fn is_signed(&self) -> bool {
        self.key.is_some()
    }

    pub fn default_expiration(&self) -> Duration {
        self.default_expiration
    }

    /// Mints a token for `actor` with `scope`'s policy IDs. `expiration` `None` or zero means
    /// `default_expiration`.
    pub fn create(
        &self,
        actor: &Actor,
        scope: &Scope,
        expiration: Option<Duration>,
        meta: serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TokenError> {
        let ttl = expiration
            .filter(|d| !d.is_zero())
            .unwrap_or(self.default_expiration);
        let mut raw = vec![0u8; self.token_length];
        // ThreadRng is a CSPRNG seeded from the OS and reseeded periodically: as unguessable as
        // OsRng without a getrandom syscall per token.
        rand::thread_rng().fill_bytes(&mut raw);
        let base = URL_SAFE.encode(&raw);
        let created = now_ms();
        // A zero default expiration means "no expiry" rather than "already expired".
        let expires = (!ttl.is_zero())
            .then(|| created.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        let record = Value::record([
            ("actor_id", Value::str(actor.id.clone())),
            ("actor_meta", Value::from_json_object(&actor.meta)),
            (
                "scope_policies",
                Value::table(
                    scope
                        .policy_ids()
                        .iter()
                        .map(|id| Value::str(id.to_string()))
                        .collect(),
                    Vec::new(),
                ),
            ),
            ("created", Value::Int(created)),
            ("expires", expires.map(Value::Int).unwrap_or(Value::Nil)),
            ("meta", Value::from_json_object(&meta)),
        ]);
        self.store.set(&base, record, Some(ttl))?;
        Ok(match &self.key {
            Some(key) => format!("{base}.{}", URL_SAFE.encode(sign(key, &base))),
            None => base,
        })
    }

    /// Checks the token and returns its actor and a scope rebuilt from `policies` (policy IDs
    /// that no longer exist are dropped).
    pub fn validate(
        &self,
        token: &str,
        policies: &PolicySet,
    ) -> Result<(Actor, Scope), TokenError> {
        let base = self.base_of(token, true)?;
        let record = self.store.get(base).ok_or(TokenError::NotFound)?;
        if let Some(expires) = record.get("expires") {
            let Value::Int(expires) = expires else {
                return Err(TokenError::Corrupt("expires"));
            };
            if *expires <= now_ms() {
                self.store.delete(base);
                return Err(TokenError::Expired);
            }
        }
        let actor_id = record
            .get("actor_id")
            .and_then(Value::as_str)
            .ok_or(TokenError::Corrupt("actor_id"))?;
        let actor_meta = match record.get("actor_meta").map(Value::to_json) {
            Some(serde_json::Value::Object(m)) => m,
            // An empty table reads back as `[]`.
            Some(serde_json::Value::Array(a)) if a.is_empty() => serde_json::Map::new(),
            None => serde_json::Map::new(),
            Some(_) => return Err(TokenError::Corrupt("actor_meta")),
        };
        let ids: Vec<EntryId> = match record.get("scope_policies") {
            Some(Value::Table(t)) => t
                .array
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|s| {
                    let (ns, name) = s.rsplit_once(':')?;
                    Some(EntryId::new(ns, name))
                })
                .collect(),
            None => Vec::new(),
            Some(_) => return Err(TokenError::Corrupt("scope_policies")),
        };
        Ok((
            Actor::new(actor_id, actor_meta),
            policies.scope_from_ids(&ids),
        ))
    }

    /// Deletes the token's record. The format is checked, the signature is not.
    pub fn revoke(&self, token: &str) -> Result<(), TokenError> {
        let base = self.base_of(token, false)?;
        if self.store.delete(base) {
            Ok(())
        } else {
            Err(TokenError::NotFound)
        }
    }

    /// The record key `B` of a token; `verify` also checks the signature, in constant time.
    fn base_of<'t>(&self, token: &'t str, verify: bool) -> Result<&'t str, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Invalid("empty token"));
        }
        let base = match &self.key {
            Some(key) => {
                let mut parts = token.split('.');
                let (Some(base), Some(sig), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(TokenError::Invalid("malformed token"));
                };
                if base.is_empty() || sig.is_empty() {
                    return Err(TokenError::Invalid("malformed token"));
                }
                if verify {
                    let sig = URL_SAFE
                        .decode(sig)
                        .map_err(|_| TokenError::Invalid("bad signature"))?;
                    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
                    mac.update(base.as_bytes());
                    mac.verify_slice(&sig)
                        .map_err(|_| TokenError::Invalid("bad signature"))?;
                }
                base
            }
            None => {
                if token.contains('.') {
                    return Err(TokenError::Invalid("malformed token"));
                }
                token
            }
        };
        if URL_SAFE.decode(base).is_err() {
            return Err(TokenError::Invalid("malformed token"));
        }
        Ok(base)
    }
}

fn sign(key: &[u8], base: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
    mac.update(base.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::policy::tests::policy;
    use crate::security::Decision;
    use serde_json::json;

    const KEY: &str = "demo-secret-key-change-in-production";

    fn cfg(key: &str) -> kinds::TokenStore {
        kinds::TokenStore {
            store: EntryId::new("app", "token_data"),
            token_length: 32,
            default_expiration: Duration::from_secs(3600),
            token_key: key.into(),
            demo_key: false,
        }
    }

    fn policies(names: &[&str]) -> PolicySet {
        let entries: Vec<_> = names
            .iter()
            .map(|n| (EntryId::new("app", *n), policy(&["*"], &["*"], true)))
            .collect();
        PolicySet::build(entries.iter().map(|(i, p)| (i, p))).0
    }

    fn setup(key: &str) -> (TokenStore, Arc<MemoryStore>, PolicySet) {
        let mem = Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        (
            TokenStore::new(&cfg(key), mem.clone()),
            mem,
            policies(&["user_policy", "extra"]),
        )
    }

    fn actor() -> Actor {
        Actor::new(
            "user:demo",
            json!({"role": "user", "user_id": 1})
                .as_object()
                .unwrap()
                .clone(),
        )
    }

    fn mint(ts: &TokenStore, set: &PolicySet, ids: &[&str]) -> String {
        let scope = set.scope_from_ids(
            &ids.iter()
                .map(|n| EntryId::new("app", *n))
                .collect::<Vec<_>>(),
        );
        ts.create(
            &actor(),
            &scope,
            None,
            json!({"ip": "1.2.3.4"}).as_object().unwrap().clone(),
        )
        .unwrap()
    }

    #[test]
    fn signed_format() {
        let (ts, mem, set) = setup(KEY);
        let token = mint(&ts, &set, &["user_policy"]);
        let (base, sig) = token.split_once('.').unwrap();
        assert_eq!(base.len(), 44);
        assert_eq!(sig.len(), 44);
        assert!(base.ends_with('='));
        assert_eq!(URL_SAFE.decode(base).unwrap().len(), 32);
        assert_eq!(sig, URL_SAFE.encode(sign(KEY.as_bytes(), base)));
        assert!(base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=".contains(c)));
        let record = mem.get(base).expect("recorded under B");
        assert_eq!(
            record.get("actor_id").and_then(Value::as_str),
            Some("user:demo")
        );
        assert_eq!(
            record
                .get("meta")
                .unwrap()
                .get("ip")
                .and_then(Value::as_str),
            Some("1.2.3.4")
        );
        assert!(matches!(record.get("created"), Some(Value::Int(_))));
        assert!(matches!(record.get("expires"), Some(Value::Int(_))));
        assert_ne!(mint(&ts, &set, &[]), token, "tokens are random");
    }

    #[test]
    fn round_trip_restores_actor_and_scope() {
        let (ts, _, set) = setup(KEY);
        let token = mint(&ts, &set, &["user_policy", "extra"]);
        let (a, scope) = ts.validate(&token, &set).unwrap();
        assert_eq!(a, actor());
        assert_eq!(
            scope.policy_ids(),
            vec![
                EntryId::new("app", "user_policy"),
                EntryId::new("app", "extra")
            ]
        );
        assert_eq!(
            scope.evaluate(Some(&a), "process.spawn", "app:x", &serde_json::Value::Null),
            Decision::Allow
        );
    }

    #[test]
    fn empty_actor_meta_and_scope_round_trip() {
        let (ts, _, set) = setup(KEY);
        let token = ts
            .create(
                &Actor::with_id("a"),
                &Scope::default(),
                None,
                Default::default(),
            )
            .unwrap();
        let (a, scope) = ts.validate(&token, &set).unwrap();
        assert_eq!(a, Actor::with_id("a"));
        assert!(scope.is_empty());
    }

    #[test]
    fn scope_is_rebuilt_from_current_policies() {
        let (ts, _, set) = setup(KEY);
        let token = mint(&ts, &set, &["user_policy", "extra"]);
        let reloaded = policies(&["extra", "brand_new"]);
        let (_, scope) = ts.validate(&token, &reloaded).unwrap();
        assert_eq!(scope.policy_ids(), vec![EntryId::new("app", "extra")]);
        let (_, scope) = ts.validate(&token, &PolicySet::default()).unwrap();
        assert!(scope.is_empty());
    }

    #[test]
    fn forged_signature_is_invalid() {
        let (ts, _, set) = setup(KEY);
        let token = mint(&ts, &set, &["user_policy"]);
        let (base, _) = token.split_once('.').unwrap();
        let forged = format!("{base}.{}", URL_SAFE.encode(sign(b"wrong key", base)));
        assert!(matches!(
            ts.validate(&forged, &set),
            Err(TokenError::Invalid(_))
        ));
        let garbage = format!("{base}.not-base64!");
        assert!(matches!(
            ts.validate(&garbage, &set),
            Err(TokenError::Invalid(_))
        ));
        let short = format!("{base}.{}", URL_SAFE.encode([0u8; 8]));
        assert!(matches!(
            ts.validate(&short, &set),
            Err(TokenError::Invalid(_))
        ));
        // A store with another key rejects the token too.
        let other = TokenStore::new(&cfg("another"), Arc::new(MemoryStore::default()));
        assert!(matches!(
            other.validate(&token, &set),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn tampered_base_is_invalid() {
        let (ts, _, set) = setup(KEY);
        let token = mint(&ts, &set, &["user_policy"]);
        let mut bytes = token.into_bytes();
        bytes[0] = if bytes[0] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            ts.validate(&tampered, &set),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn malformed_tokens() {
        let (ts, _, set) = setup(KEY);
        let token = mint(&ts, &set, &[]);
        let (base, sig) = token.split_once('.').unwrap();
        for bad in [
            String::new(),
            base.to_string(),
            format!("{base}."),
            format!(".{sig}"),
            format!("{token}.x"),
            format!("{base}.{sig}.{sig}"),
        ] {
            assert!(
                matches!(ts.validate(&bad, &set), Err(TokenError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_but_well_signed_base_is_not_found() {
        let (ts, _, set) = setup(KEY);
        let base = URL_SAFE.encode([7u8; 32]);
        let token = format!("{base}.{}", URL_SAFE.encode(sign(KEY.as_bytes(), &base)));
        assert!(matches!(
            ts.validate(&token, &set),
            Err(TokenError::NotFound)
        ));
    }

    #[test]
    fn expired_record_is_rejected_and_deleted() {
        let (ts, mem, set) = setup(KEY);
        let token = mint(&ts, &set, &["user_policy"]);
        let base = token.split_once('.').unwrap().0;
        // The backing store's TTL has not fired yet but the recorded expiry has passed.
        let Value::Table(t) = mem.get(base).unwrap() else {
            panic!()
        };
        let mut t = (*t).clone();
        for (k, v) in t.map.iter_mut() {
            if k.as_str() == Some("expires") {
                *v = Value::Int(now_ms() - 1);
            }
        }
        mem.set(base, Value::Table(Arc::new(t)), None).unwrap();
        assert!(matches!(
            ts.validate(&token, &set),
            Err(TokenError::Expired)
        ));
        assert!(!mem.has(base), "an expired token is removed");
        assert!(matches!(
            ts.validate(&token, &set),
            Err(TokenError::NotFound)
        ));
    }

    #[test]
    fn short_expiration_lapses() {
        let (ts, _, set) = setup(KEY);
        let token = ts
            .create(
                &actor(),
                &Scope::default(),
                Some(Duration::from_millis(20)),
                Default::default(),
            )
            .unwrap();
        assert!(ts.validate(&token, &set).is_ok());
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(
            ts.validate(&token, &set),
            Err(TokenError::Expired | TokenError::NotFound)
        ));
    }

    #[test]
    fn expiration_defaults() {
        let (ts, mem, set) = setup(KEY);
        for exp in [None, Some(Duration::ZERO)] {
            let token = ts
                .create(&actor(), &Scope::default(), exp, Default::default())
                .unwrap();
            let base = token.split_once('.').unwrap().0;
            let rec = mem.get(base).unwrap();
            let (Some(Value::Int(c)), Some(Value::Int(e))) =
                (rec.get("created"), rec.get("expires"))
            else {
                panic!()
            };
            assert_eq!(e - c, 3_600_000);
            assert!(ts.validate(&token, &set).is_ok());
        }
    }

    #[test]
    fn revoke() {
        let (ts, _, set) = setup(KEY);
        let token = mint(&ts, &set, &["user_policy"]);
        ts.revoke(&token).unwrap();
        assert!(matches!(
            ts.validate(&token, &set),
            Err(TokenError::NotFound)
        ));
        assert!(matches!(ts.revoke(&token), Err(TokenError::NotFound)));
        assert!(matches!(ts.revoke(""), Err(TokenError::Invalid(_))));
        assert!(matches!(ts.revoke("no-dot"), Err(TokenError::Invalid(_))));
        // Revocation needs the format, not the signature.
        let other = mint(&ts, &set, &[]);
        let base = other.split_once('.').unwrap().0;
        ts.revoke(&format!("{base}.{}", URL_SAFE.encode([1u8; 32])))
            .unwrap();
        assert!(ts.validate(&other, &set).is_err());
    }

    #[test]
    fn unsigned_mode() {
        let (ts, _, set) = setup("");
        assert!(!ts.is_signed());
        let token = mint(&ts, &set, &["user_policy"]);
        assert_eq!(token.len(), 44);
        assert!(!token.contains('.'));
        let (a, scope) = ts.validate(&token, &set).unwrap();
        assert_eq!(a.id, "user:demo");
        assert_eq!(scope.len(), 1);
        assert!(matches!(
            ts.validate(&format!("{token}.x"), &set),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(ts.validate("", &set), Err(TokenError::Invalid(_))));
        assert!(matches!(
            ts.validate("not base64!", &set),
            Err(TokenError::Invalid(_))
        ));
        ts.revoke(&token).unwrap();
        assert!(matches!(
            ts.validate(&token, &set),
            Err(TokenError::NotFound)
        ));
    }

    #[test]
    fn token_length_is_configurable() {
        let mut c = cfg(KEY);
        c.token_length = 16;
        let ts = TokenStore::new(&c, Arc::new(MemoryStore::default()));
        let token = ts
            .create(&actor(), &Scope::default(), None, Default::default())
            .unwrap();
        let (base, sig) = token.split_once('.').unwrap();
        assert_eq!(base.len(), 24);
        assert_eq!(sig.len(), 44);
    }

    #[test]
    fn full_backing_store_fails_creation() {
        let mem = Arc::new(MemoryStore::new(1, Duration::from_secs(60)));
        let ts = TokenStore::new(&cfg(KEY), mem);
        ts.create(&actor(), &Scope::default(), None, Default::default())
            .unwrap();
        let err = ts
            .create(&actor(), &Scope::default(), None, Default::default())
            .unwrap_err();
        assert!(matches!(err, TokenError::Store(StoreError::Full(1))));
    }

    #[test]
    fn debug_hides_the_key() {
        let (ts, _, _) = setup(KEY);
        assert!(!format!("{ts:?}").contains(KEY));
    }
}
