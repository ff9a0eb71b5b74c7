//! Signed API requests: `API-Signature` = hex HMAC-SHA256, under the key's secret, of
//! `METHOD\npath?query\ntimestamp\nbody`. A timestamp outside the window, or a signature already
//! accepted inside it, is refused: together they make a captured request useless for replay.

use crate::security::digest::{constant_time_eq, hex_decode, hmac_sha256, hmac_sha256_hex};
use crate::security::expiring::ExpiringMap;
use std::sync::Mutex;

/// Why a signed request was refused; the text goes to the client in the 401 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("API-Timestamp must be Unix seconds or milliseconds")]
    BadTimestamp,
    #[error("API-Timestamp is outside the allowed window of {0} seconds")]
    Stale(i64),
    #[error("API-Signature must be 64 hex digits")]
    Malformed,
    #[error("signature mismatch")]
    Mismatch,
    #[error("signature already used (replay)")]
    Replayed,
}

/// The exact bytes that are signed. `path_and_query` is the request target as sent (`/api/me`
/// or `/api/alerts?limit=5`).
pub fn canonical(method: &str, path_and_query: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(method.len() + path_and_query.len() + timestamp.len() + body.len() + 3);
    for part in [
        method.as_bytes(),
        path_and_query.as_bytes(),
        timestamp.as_bytes(),
    ] {
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out
}

/// What a client puts in `API-Signature`.
pub fn sign(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    body: &[u8],
) -> String {
    hmac_sha256_hex(secret, &canonical(method, path_and_query, timestamp, body))
}

/// The timestamp in Unix seconds; values above 10^11 are taken as milliseconds.
pub fn parse_timestamp(text: &str) -> Result<i64, SignatureError> {
    let n: i64 = text
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if n <= 0 {
        return Err(SignatureError::BadTimestamp);
    }
    Ok(if n > 100_000_000_000 { n / 1000 } else { n })
}

pub fn check_window(timestamp: i64, now: i64, window: i64) -> Result<(), SignatureError> {
    if (timestamp - now).abs() > window {
        return Err(SignatureError::Stale(window));
    }
    Ok(())
}

/// Constant-time check of a hex signature; returns the MAC (the key of the replay guard).
pub fn verify(
    secret: &[u8],
    canonical: &[u8],
    signature_hex: &str,
) -> Result<[u8; 32], SignatureError> {
    let given = hex_decode(signature_hex.trim().as_bytes())
        .filter(|g| g.len() == 32)
        .ok_or(SignatureError::Malformed)?;
    let mac = hmac_sha256(secret, canonical);
    if constant_time_eq(&mac, &given) {
        Ok(mac)
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Signatures accepted within the window, each kept until its timestamp leaves the window.
/// Process-wide and in memory: a restart forgets them, which the timestamp window bounds to
/// `window` seconds of exposure.
pub struct ReplayGuard {
    seen: Mutex<ExpiringMap<[u8; 32], i64>>,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard {
            seen: Mutex::new(ExpiringMap::new(4096)),
        }
    }
}

impl ReplayGuard {
    /// Records `signature` (valid until `expires_at`); `Replayed` if it was already recorded
    /// and has not expired.
    pub fn remember(
        &self,
        signature: [u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<(), SignatureError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.sweep_if_due(|_, exp| *exp >= now);
        match seen.get(&signature) {
            Some(exp) if *exp >= now => Err(SignatureError::Replayed),
            _ => {
                seen.map().insert(signature, expires_at);
                Ok(())
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_string_layout() {
        assert_eq!(
            canonical("POST", "/api/alerts?x=1", "1700000000", b"{}"),
            b"POST\n/api/alerts?x=1\n1700000000\n{}"
        );
        assert_eq!(canonical("GET", "/api/me", "1", b""), b"GET\n/api/me\n1\n");
    }

    #[test]
    fn signatures_verify_and_mismatch() {
        let c = canonical("GET", "/api/me", "1700000000", b"");
        let sig = sign(b"secret", "GET", "/api/me", "1700000000", b"");
        let mac = |r: Result<[u8; 32], SignatureError>| {
            r.map(|m| crate::security::digest::hex_encode(&m))
        };
        assert_eq!(mac(verify(b"secret", &c, &sig)), Ok(sig.clone()));
        assert_eq!(
            mac(verify(b"secret", &c, &sig.to_uppercase())),
            Ok(sig.clone())
        );
        assert_eq!(verify(b"other", &c, &sig), Err(SignatureError::Mismatch));
        let c2 = canonical("GET", "/api/me?x", "1700000000", b"");
        assert_eq!(verify(b"secret", &c2, &sig), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"secret", &c, "abc"), Err(SignatureError::Malformed));
    }

    #[test]
    fn timestamps_and_window() {
        assert_eq!(parse_timestamp("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_timestamp("1700000000123"), Ok(1_700_000_000));
        assert_eq!(parse_timestamp("soon"), Err(SignatureError::BadTimestamp));
        assert_eq!(parse_timestamp("-5"), Err(SignatureError::BadTimestamp));
        assert_eq!(check_window(100, 130, 30), Ok(()));
        assert_eq!(check_window(100, 131, 30), Err(SignatureError::Stale(30)));
        assert_eq!(check_window(161, 130, 30), Err(SignatureError::Stale(30)));
    }

    #[test]
    fn replays_inside_the_window_are_refused() {
        let g = ReplayGuard::default();
        assert_eq!(g.remember([1; 32], 200, 100), Ok(()));
        assert_eq!(g.remember([1; 32], 200, 150), Err(SignatureError::Replayed));
        assert_eq!(g.remember([2; 32], 200, 150), Ok(()));
        // Once expired, the entry may be reused (the timestamp check refuses it anyway).
        assert_eq!(g.remember([1; 32], 400, 201), Ok(()));
        assert_eq!(g.len(), 2);
    }
}
