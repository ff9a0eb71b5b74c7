//! Users and API keys in the app's SQLite database (the schema is the app's Lua migration,
//! `scripts/migrate.lua`): lookups for the `api_auth` middleware and the management operations
//! behind `moonwire users` / `moonwire keys`.
//!
//! A key's secret is never stored. It is derived, when needed, as HMAC(master key, key id ‖ salt)
//! with the master key from the environment; the database keeps the salt and a SHA-256 of the
//! secret. A stolen database therefore yields no usable secret, and the server can still verify
//! HMAC request signatures, which need the secret itself.

use crate::process::value::Value;
use crate::security::digest::{constant_time_eq, hex_encode, hmac_sha256_hex, sha256_hex};
use crate::security::{password, unix_now};
use crate::store::sqlite::{Row, SqlError, SqlParam, Sqlite};
use rand::RngCore;

/// Every permission a key can carry; each maps to a security policy in the router's options.
pub const PERMISSIONS: &[&str] = &["read", "trade"];

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("database: {0}")]
    Db(#[from] SqlError),
    #[error("unknown permission `{0}` (known: read, trade)")]
    UnknownPermission(String),
    #[error("a key needs at least one permission")]
    NoPermissions,
    #[error("no user `{0}`")]
    NoUser(String),
    #[error("a user with email `{0}` already exists")]
    DuplicateEmail(String),
    #[error("invalid email `{0}`")]
    BadEmail(String),
    #[error("{0}")]
    Password(#[from] password::PasswordError),
    #[error("the `{0}` table is missing: start `moonwire run` once so the app's migration creates the schema")]
    NoSchema(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub email: Option<String>,
    pub role: String,
    pub password_hash: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// The public key id (the tutorial's `api_key` column).
    pub api_key: String,
    pub user_id: String,
    pub role: String,
    pub permissions: Vec<String>,
    pub secret_salt: Option<String>,
    pub secret_hash: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl KeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// The key's signing secret, re-derived under `master`; `None` for a key without a secret
    /// (the tutorial's demo key) or when `master` is not the key it was issued under.
    pub fn secret(&self, master: &[u8]) -> Option<String> {
        let (salt, hash) = (self.secret_salt.as_ref()?, self.secret_hash.as_ref()?);
        let secret = derive_secret(master, &self.api_key, salt);
        constant_time_eq(sha256_hex(secret.as_bytes()).as_bytes(), hash.as_bytes())
            .then_some(secret)
    }
}

pub fn derive_secret(master: &[u8], api_key: &str, salt: &str) -> String {
    hmac_sha256_hex(
        master,
        format!("moonwire-api-secret\0{api_key}\0{salt}").as_bytes(),
    )
}

/// `"read, trade"` → `["read", "trade"]`, checked against [`PERMISSIONS`], deduplicated.
pub fn parse_permissions(text: &str) -> Result<Vec<String>, AccountError> {
    let mut out: Vec<String> = Vec::new();
    for p in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !PERMISSIONS.contains(&p) {
            return Err(AccountError::UnknownPermission(p.to_string()));
        }
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    }
    if out.is_empty() {
        return Err(AccountError::NoPermissions);
    }
    Ok(out)
}

/// What Basic auth grants: a `viewer` reads, everyone else reads and trades.
pub fn role_permissions(role: &str) -> Vec<String> {
    match role {
        "viewer" => vec!["read".into()],
        _ => PERMISSIONS.iter().map(|p| p.to_string()).collect(),
    }
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex_encode(&b)
}

fn text(row: &Row, col: &str) -> Option<String> {
    row.iter()
        .find(|(c, _)| c == col)
        .and_then(|(_, v)| match v {
            Value::Str(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        })
}

fn int(row: &Row, col: &str) -> Option<i64> {
    row.iter()
        .find(|(c, _)| c == col)
        .and_then(|(_, v)| match v {
            Value::Int(i) => Some(*i),
            Value::Float(f) => Some(*f as i64),
            _ => None,
        })
}

fn user_from(row: &Row) -> UserRecord {
    UserRecord {
        id: text(row, "id").unwrap_or_default(),
        email: text(row, "email"),
        role: text(row, "role").unwrap_or_else(|| "user".into()),
        password_hash: text(row, "password_hash"),
        created_at: int(row, "created_at").unwrap_or_default(),
    }
}

fn key_from(row: &Row) -> KeyRecord {
    KeyRecord {
        api_key: text(row, "api_key").unwrap_or_default(),
        user_id: text(row, "user_id").unwrap_or_default(),
        role: text(row, "role").unwrap_or_else(|| "user".into()),
        permissions: text(row, "permissions")
            .and_then(|p| parse_permissions(&p).ok())
            .unwrap_or_default(),
        secret_salt: text(row, "secret_salt"),
        secret_hash: text(row, "secret_hash"),
        created_at: int(row, "created_at").unwrap_or_default(),
        revoked_at: int(row, "revoked_at"),
    }
}

fn t(s: &str) -> SqlParam {
    SqlParam::Text(s.to_string())
}

const KEY_COLUMNS: &str = "k.api_key, k.user_id, COALESCE(u.role, k.role) AS role, k.permissions, \
     k.secret_salt, k.secret_hash, k.created_at, k.revoked_at";

async fn require_table(db: &Sqlite, table: &'static str) -> Result<(), AccountError> {
    let rows = db
        .query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?".into(),
            vec![t(table)],
        )
        .await?;
    if rows.is_empty() {
        return Err(AccountError::NoSchema(table));
    }
    Ok(())
}

pub async fn find_key(db: &Sqlite, api_key: &str) -> Result<Option<KeyRecord>, AccountError> {
    let rows = db
        .query(
            format!("SELECT {KEY_COLUMNS} FROM api_keys k LEFT JOIN users u ON u.id = k.user_id WHERE k.api_key = ?"),
            vec![t(api_key)],
        )
        .await?;
    Ok(rows.first().map(key_from))
}

pub async fn list_keys(db: &Sqlite, user_id: Option<&str>) -> Result<Vec<KeyRecord>, AccountError> {
    require_table(db, "api_keys").await?;
    let (filter, params) = match user_id {
        Some(u) => ("WHERE k.user_id = ?", vec![t(u)]),
        None => ("", Vec::new()),
    };
    let rows = db
        .query(
            format!("SELECT {KEY_COLUMNS} FROM api_keys k LEFT JOIN users u ON u.id = k.user_id {filter} ORDER BY k.id"),
            params,
        )
        .await?;
    Ok(rows.iter().map(key_from).collect())
}

pub async fn find_user_by_email(
    db: &Sqlite,
    email: &str,
) -> Result<Option<UserRecord>, AccountError> {
    let rows = db
        .query(
            "SELECT id, email, role, password_hash, created_at FROM users WHERE email = ? COLLATE NOCASE".into(),
            vec![t(email)],
        )
        .await?;
    Ok(rows.first().map(user_from))
}

/// A user by id, or by email when `who` contains `@`.
pub async fn find_user(db: &Sqlite, who: &str) -> Result<Option<UserRecord>, AccountError> {
    require_table(db, "users").await?;
    if who.contains('@') {
        return find_user_by_email(db, who).await;
    }
    let rows = db
        .query(
            "SELECT id, email, role, password_hash, created_at FROM users WHERE id = ?".into(),
            vec![t(who)],
        )
        .await?;
    Ok(rows.first().map(user_from))
}

pub async fn create_user(
    db: &Sqlite,
    email: &str,
    role: &str,
    password: &str,
) -> Result<UserRecord, AccountError> {
    require_table(db, "users").await?;
    let email = email.trim();
    if !email.contains('@') || email.contains(char::is_whitespace) || email.contains(':') {
        return Err(AccountError::BadEmail(email.to_string()));
    }
    if find_user_by_email(db, email).await?.is_some() {
        return Err(AccountError::DuplicateEmail(email.to_string()));
    }
    let user = UserRecord {
        id: format!("u{}", random_token(6)),
        email: Some(email.to_string()),
        role: role.to_string(),
        password_hash: Some(password::hash(password)?),
        created_at: unix_now(),
    };
    db.execute(
        "INSERT INTO users (id, email, role, password_hash, created_at) VALUES (?, ?, ?, ?, ?)"
            .into(),
        vec![
            t(&user.id),
            t(email),
            t(role),
            t(user.password_hash.as_deref().unwrap_or_default()),
            SqlParam::Int(user.created_at),
        ],
    )
    .await?;
    Ok(user)
}

/// A new key for `who` (user id or email); returns the record and the secret, which is shown
/// once and never stored.
pub async fn create_key(
    db: &Sqlite,
    master: &[u8],
    who: &str,
    permissions: &[String],
) -> Result<(KeyRecord, String), AccountError> {
    if permissions.is_empty() {
        return Err(AccountError::NoPermissions);
    }
    let user = find_user(db, who)
        .await?
        .ok_or_else(|| AccountError::NoUser(who.to_string()))?;
    let api_key = format!("mk_{}", random_token(12));
    let salt = random_token(16);
    let secret = derive_secret(master, &api_key, &salt);
    let record = KeyRecord {
        api_key,
        user_id: user.id,
        role: user.role,
        permissions: permissions.to_vec(),
        secret_salt: Some(salt),
        secret_hash: Some(sha256_hex(secret.as_bytes())),
        created_at: unix_now(),
        revoked_at: None,
    };
    db.execute(
        "INSERT INTO api_keys (api_key, user_id, role, permissions, secret_salt, secret_hash, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)"
            .into(),
        vec![
            t(&record.api_key),
            t(&record.user_id),
            t(&record.role),
            t(&record.permissions.join(",")),
            t(record.secret_salt.as_deref().unwrap_or_default()),
            t(record.secret_hash.as_deref().unwrap_or_default()),
            SqlParam::Int(record.created_at),
        ],
    )
    .await?;
    Ok((record, secret))
}

/// Marks a key revoked; `false` when there is no such key or it was revoked already.
pub async fn revoke_key(db: &Sqlite, api_key: &str) -> Result<bool, AccountError> {
    require_table(db, "api_keys").await?;
    let r = db
        .execute(
            "UPDATE api_keys SET revoked_at = ? WHERE api_key = ? AND revoked_at IS NULL".into(),
            vec![SqlParam::Int(unix_now()), t(api_key)],
        )
        .await?;
    Ok(r.rows_affected > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_strictly() {
        assert_eq!(
            parse_permissions("read, trade,read").unwrap(),
            ["read", "trade"]
        );
        assert!(
            matches!(parse_permissions("read,admin"), Err(AccountError::UnknownPermission(p)) if p == "admin")
        );
        assert!(matches!(
            parse_permissions(" , "),
            Err(AccountError::NoPermissions)
        ));
        assert_eq!(role_permissions("viewer"), ["read"]);
    }

    #[test]
    fn secrets_rederive_only_under_their_master_key() {
        let secret = derive_secret(b"master", "mk_1", "salt");
        let key = KeyRecord {
            api_key: "mk_1".into(),
            user_id: "u1".into(),
            role: "user".into(),
            permissions: vec!["read".into()],
            secret_salt: Some("salt".into()),
            secret_hash: Some(sha256_hex(secret.as_bytes())),
            created_at: 0,
            revoked_at: None,
        };
        assert_eq!(key.secret(b"master").as_deref(), Some(secret.as_str()));
        assert_eq!(key.secret(b"other"), None);
        assert_ne!(derive_secret(b"master", "mk_2", "salt"), secret);
    }
}
