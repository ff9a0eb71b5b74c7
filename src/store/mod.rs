//! Data stores: the embedded SQLite database and the in-memory key/value store.

pub mod memory;
pub mod sqlite;
