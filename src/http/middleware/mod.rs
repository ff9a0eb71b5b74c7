//! HTTP middleware named in `http.router` entries.

pub mod api_auth;
pub mod auth_limiter;
pub mod cors;
pub mod token_auth;
