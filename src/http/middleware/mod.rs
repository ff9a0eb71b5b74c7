//! HTTP middleware named in `http.router` entries.

pub mod cors;
pub mod token_auth;
