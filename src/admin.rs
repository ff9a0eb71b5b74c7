//! `moonwire users …`, `moonwire keys …`, `moonwire tokens …`: account management on the app's
//! database from the command line, so nobody edits SQLite by hand. The database and the keys
//! come from the registry's `api_auth` router options, the same ones the server uses.

use crate::http::middleware::api_auth::ApiAuth;
use crate::registry::kinds::EntryKind;
use crate::registry::Registry;
use crate::security::accounts::{self, AccountError, KeyRecord, UserRecord};
use crate::security::internal_token;
use crate::store::sqlite::Sqlite;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no http.router lists the `api_auth` middleware, so there is no accounts database")]
    NoApiAuth,
    #[error("database `{0}` is not a db.sql.sqlite entry of this registry")]
    NoDatabase(String),
    #[error("cannot open the database: {0}")]
    Open(String),
    #[error("`api_auth.internal_key` is empty: internal tokens are disabled")]
    NoInternalKey,
    #[error("{0}")]
    Account(#[from] AccountError),
    #[error("{0}")]
    Token(#[from] internal_token::InternalTokenError),
}

/// The accounts database and keys of one registry.
pub struct Accounts {
    db: Arc<Sqlite>,
    auth: ApiAuth,
    rt: tokio::runtime::Runtime,
}

impl Accounts {
    pub fn open(registry: &Registry, project_root: &Path) -> Result<Accounts, AdminError> {
        let auth = registry
            .entries()
            .iter()
            .find_map(|e| match &e.kind {
                EntryKind::Router(r) if r.middleware.iter().any(|m| m == "api_auth") => {
                    ApiAuth::from_options(&r.options, &e.id.namespace)
                }
                _ => None,
            })
            .ok_or(AdminError::NoApiAuth)?;
        let file = match registry.get(auth.db()).map(|e| &e.kind) {
            Some(EntryKind::Sqlite(db)) => db.file.clone(),
            _ => return Err(AdminError::NoDatabase(auth.db().to_string())),
        };
        let db = Sqlite::open(&file, project_root).map_err(|e| AdminError::Open(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AdminError::Open(e.to_string()))?;
        Ok(Accounts { db, auth, rt })
    }

    pub fn create_user(
        &self,
        email: &str,
        role: &str,
        password: &str,
    ) -> Result<UserRecord, AdminError> {
        Ok(self
            .rt
            .block_on(accounts::create_user(&self.db, email, role, password))?)
    }

    /// The new key and its secret (shown once).
    pub fn create_key(
        &self,
        user: &str,
        permissions: &str,
    ) -> Result<(KeyRecord, String), AdminError> {
        let perms = accounts::parse_permissions(permissions)?;
        Ok(self.rt.block_on(accounts::create_key(
            &self.db,
            self.auth.secret_key(),
            user,
            &perms,
        ))?)
    }

    pub fn list_keys(&self, user: Option<&str>) -> Result<Vec<KeyRecord>, AdminError> {
        Ok(self.rt.block_on(accounts::list_keys(&self.db, user))?)
    }

    pub fn revoke_key(&self, api_key: &str) -> Result<bool, AdminError> {
        Ok(self.rt.block_on(accounts::revoke_key(&self.db, api_key))?)
    }

    /// An internal token for an existing user, valid for `ttl`.
    pub fn issue_internal_token(
        &self,
        user: &str,
        ttl: std::time::Duration,
    ) -> Result<String, AdminError> {
        let key = self.auth.internal_key().ok_or(AdminError::NoInternalKey)?;
        let record = self
            .rt
            .block_on(accounts::find_user(&self.db, user))?
            .ok_or_else(|| AccountError::NoUser(user.to_string()))?;
        let expires = crate::security::unix_now() + ttl.as_secs() as i64;
        Ok(internal_token::issue(key, &record.id, expires)?)
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        self.db.close_blocking();
    }
}
