//! The `metrics` module: `metrics.text()` returns the node's metrics in the Prometheus text
//! format (`crate::metrics::render`), `metrics.content_type()` the `Content-Type` to serve it
//! with. A `GET /metrics` handler is these two calls and `res:write`.
//!
//! Reading the counters changes nothing outside the process, so there is no policy check: the
//! entry's `modules:` allow-list is the gate.

use crate::lua::context;
use crate::lua::errors::{fail, ok};
use crate::process::value::ErrorKind;
use mlua::{Lua, Table};

fn text(lua: &Lua, (): ()) -> mlua::Result<(mlua::Value, mlua::Value)> {
    match context::with_current(|c| crate::metrics::render(&c.node)) {
        Some(text) => ok(lua, text),
        None => fail(lua, ErrorKind::Invalid, "not running inside a process"),
    }
}

pub fn loader(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("text", lua.create_function(text)?)?;
    t.set(
        "content_type",
        lua.create_function(|_, ()| Ok(crate::metrics::CONTENT_TYPE))?,
    )?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_and_text_outside_a_process() {
        let lua = Lua::new();
        crate::lua::errors::register(&lua, &lua.globals()).unwrap();
        lua.register_module("metrics", loader(&lua).unwrap())
            .unwrap();
        let (ct, text, err): (String, mlua::Value, String) = lua
            .load(
                r#"local m = require("metrics")
                   local text, err = m.text()
                   return m.content_type(), text, err:message()"#,
            )
            .eval()
            .unwrap();
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        assert!(text.is_nil());
        assert_eq!(err, "not running inside a process");
    }
}
