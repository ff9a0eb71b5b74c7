//! moonwire: a Wippy-compatible runtime. A YAML registry of entries, Lua handlers run as
//! supervised green processes, HTTP with middleware, token auth, SQLite and a WebSocket relay.
//!
//! Data flows one way: `registry` (files → typed entries) → `runtime` (starts entries) →
//! services (`http`, `process`, `store`, `security`) → `lua` (scripts).

pub mod admin;
pub mod http;
pub mod lua;
pub mod metrics;
pub mod process;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod security;
pub mod store;
