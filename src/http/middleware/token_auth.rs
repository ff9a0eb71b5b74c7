//! `token_auth` (§8.3): finds a token in the header, query parameter or cookie, validates it
//! against a token store, and sets the request's actor and scope. Never blocks a request.

use crate::registry::kinds::EntryId;
use crate::runtime::Node;
use crate::security::SecurityContext;
use hyper::HeaderMap;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub store: EntryId,
    header_name: String,
    header_prefix: String,
    query_param: String,
    cookie_name: String,
}

fn option<'a>(opts: &'a BTreeMap<String, String>, key: &str, legacy: &str) -> Option<&'a str> {
    opts.get(key)
        .or_else(|| opts.get(legacy))
        .map(String::as_str)
}

impl TokenAuth {
    /// `None` when `token_auth.store` is missing (the registry loader reports that).
    pub fn from_options(opts: &BTreeMap<String, String>, namespace: &str) -> Option<TokenAuth> {
        let store = option(opts, "token_auth.store", "token_store")?;
        Some(TokenAuth {
            store: EntryId::resolve(store, namespace)?,
            header_name: option(opts, "token_auth.header.name", "header_name")
                .unwrap_or("Authorization")
                .to_string(),
            header_prefix: option(opts, "token_auth.header.prefix", "header_prefix")
                .unwrap_or("Bearer ")
                .to_string(),
            query_param: option(opts, "token_auth.query.param", "query_param")
                .unwrap_or("x-auth-token")
                .to_string(),
            cookie_name: option(opts, "token_auth.cookie.name", "cookie_name")
                .unwrap_or("x-auth-token")
                .to_string(),
        })
    }

    /// The token carried by the request, header first, then query, then cookie.
    pub fn extract(&self, headers: &HeaderMap, query: &[(String, String)]) -> Option<String> {
        if let Some(v) = headers
            .get(self.header_name.as_str())
            .and_then(|v| v.to_str().ok())
        {
            if let Some(t) = v.strip_prefix(self.header_prefix.as_str()) {
                if !t.trim().is_empty() {
                    return Some(t.trim().to_string());
                }
            }
        }
        if let Some((_, v)) = query
            .iter()
            .find(|(k, v)| *k == self.query_param && !v.is_empty())
        {
            return Some(v.clone());
        }
        for cookie in headers
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for part in cookie.split(';') {
                if let Some((k, v)) = part.trim().split_once('=') {
                    if k == self.cookie_name && !v.is_empty() {
                        return Some(v.to_string());
                    }
                }
            }
        }
        None
    }

    /// The security context of a valid token, or `None` (logged) for anything else.
    pub fn authenticate(
        &self,
        node: &Node,
        headers: &HeaderMap,
        query: &[(String, String)],
    ) -> Option<SecurityContext> {
        let token = self.extract(headers, query)?;
        let Some(store) = node.token_store(&self.store) else {
            tracing::warn!(store = %self.store, "token_auth: token store unavailable");
            return None;
        };
        let policies = node.snapshot().policies.clone();
        match store.validate(&token, &policies) {
            Ok((actor, scope)) => Some(SecurityContext::new(Some(actor), Some(scope))),
            Err(e) => {
                tracing::debug!(error = %e, "token_auth: token rejected");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> TokenAuth {
        let mut o = BTreeMap::new();
        o.insert("token_auth.store".to_string(), "tokens".to_string());
        TokenAuth::from_options(&o, "app").unwrap()
    }

    #[test]
    fn header_beats_query_beats_cookie() {
        let a = auth();
        assert_eq!(a.store, EntryId::new("app", "tokens"));
        let mut h = HeaderMap::new();
        h.insert("cookie", "x=1; x-auth-token=fromcookie".parse().unwrap());
        assert_eq!(a.extract(&h, &[]).as_deref(), Some("fromcookie"));
        let q = vec![("x-auth-token".to_string(), "fromquery".to_string())];
        assert_eq!(a.extract(&h, &q).as_deref(), Some("fromquery"));
        h.insert("authorization", "Bearer fromheader".parse().unwrap());
        assert_eq!(a.extract(&h, &q).as_deref(), Some("fromheader"));
    }

    #[test]
    fn prefix_is_case_sensitive() {
        let a = auth();
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer x".parse().unwrap());
        assert_eq!(a.extract(&h, &[]), None);
    }
}
