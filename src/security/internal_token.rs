//! Internal bearer tokens `user:expiry:hmac`: the user id, the expiry in Unix seconds, and the
//! hex HMAC-SHA256 of `user:expiry` under a key from the environment. Verifying needs only the
//! key, no store, so a token survives restarts and is accepted by every node sharing the key.

use crate::security::digest::{constant_time_eq, hex_decode, hmac_sha256, hmac_sha256_hex};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InternalTokenError {
    #[error("malformed internal token")]
    Malformed,
    #[error("internal token signature mismatch")]
    BadSignature,
    #[error("internal token expired")]
    Expired,
    #[error("user id must be non-empty and must not contain ':'")]
    BadUser,
}

/// Whether `token` has the internal shape (three `:`-separated parts, the last 64 hex digits),
/// so a bearer value can be routed to this verifier rather than to a token store.
pub fn looks_internal(token: &str) -> bool {
    let mut parts = token.rsplitn(3, ':');
    let (Some(mac), Some(expiry), Some(user)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    mac.len() == 64
        && mac.bytes().all(|b| b.is_ascii_hexdigit())
        && !expiry.is_empty()
        && expiry.bytes().all(|b| b.is_ascii_digit())
        && !user.is_empty()
}

pub fn issue(key: &[u8], user: &str, expires_at: i64) -> Result<String, InternalTokenError> {
    if user.is_empty() || user.contains(':') {
        return Err(InternalTokenError::BadUser);
    }
    let base = format!("{user}:{expires_at}");
    let mac = hmac_sha256_hex(key, base.as_bytes());
    Ok(format!("{base}:{mac}"))
}

/// The user id and expiry of a valid token at time `now` (Unix seconds).
pub fn verify(key: &[u8], token: &str, now: i64) -> Result<(String, i64), InternalTokenError> {
    let (base, mac) = token
        .rsplit_once(':')
        .ok_or(InternalTokenError::Malformed)?;
    let (user, expiry) = base.split_once(':').ok_or(InternalTokenError::Malformed)?;
    if user.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InternalTokenError::Malformed);
    }
    let expiry: i64 = expiry.parse().map_err(|_| InternalTokenError::Malformed)?;
    let given = hex_decode(mac.as_bytes()).ok_or(InternalTokenError::Malformed)?;
    if !constant_time_eq(&hmac_sha256(key, base.as_bytes()), &given) {
        return Err(InternalTokenError::BadSignature);
    }
    if expiry <= now {
        return Err(InternalTokenError::Expired);
    }
    Ok((user.to_string(), expiry))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"internal-key";

    #[test]
    fn issued_tokens_verify_until_expiry() {
        let t = issue(KEY, "u42", 1_000).unwrap();
        assert!(looks_internal(&t));
        assert_eq!(verify(KEY, &t, 999), Ok(("u42".into(), 1_000)));
        assert_eq!(verify(KEY, &t, 1_000), Err(InternalTokenError::Expired));
    }

    #[test]
    fn tampering_is_detected() {
        let t = issue(KEY, "u42", 1_000).unwrap();
        let other_user = t.replacen("u42", "u43", 1);
        assert_eq!(
            verify(KEY, &other_user, 0),
            Err(InternalTokenError::BadSignature)
        );
        let later = t.replacen(":1000:", ":9000:", 1);
        assert_eq!(
            verify(KEY, &later, 0),
            Err(InternalTokenError::BadSignature)
        );
        assert_eq!(
            verify(b"other-key", &t, 0),
            Err(InternalTokenError::BadSignature)
        );
        assert_eq!(
            verify(KEY, "u42:1000", 0),
            Err(InternalTokenError::Malformed)
        );
        assert_eq!(
            verify(KEY, "u42:x:00", 0),
            Err(InternalTokenError::Malformed)
        );
        assert!(!looks_internal("abcdef"));
        assert!(matches!(
            issue(KEY, "a:b", 1),
            Err(InternalTokenError::BadUser)
        ));
    }
}
