//! The only user of hyper and tungstenite: servers, routing, middleware, static files and the
//! WebSocket relay.

pub mod middleware;
pub mod router;
pub mod server;
pub mod static_files;
pub mod ws_outlet;
pub mod ws_read_gate;
pub mod ws_relay;
