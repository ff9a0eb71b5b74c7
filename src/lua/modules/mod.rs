//! One file per require-able module; `load` builds a module's table for a worker's Lua state.
//! An entry's `modules:` list is the allow-list `require` checks.

pub mod crypto;
pub mod http;
pub mod json;
pub mod logger;
pub mod metrics;
pub mod process;
pub mod security;
pub mod sql;
pub mod store;
pub mod time;

use mlua::{Lua, Table};

/// Builds the table of module `name` (once per worker; the caller caches it).
pub fn load(lua: &Lua, name: &str) -> mlua::Result<Option<Table>> {
    Ok(Some(match name {
        "json" => json::loader(lua)?,
        "logger" => logger::loader(lua)?,
        "time" => {
            let t = time::loader(lua)?;
            crate::lua::channel::register_time_async(lua, &t)?;
            t
        }
        "crypto" => crypto::loader(lua)?,
        "sql" => sql::loader(lua)?,
        "security" => security::loader(lua)?,
        "store" => store::loader(lua)?,
        "http" => http::loader(lua)?,
        "metrics" => metrics::loader(lua)?,
        _ => return Ok(None),
    }))
}
