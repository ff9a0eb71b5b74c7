//! The `logger` module (§6.3): structured log calls from scripts, emitted as `tracing` events.
//!
//! Each call becomes one event with target `lua`, the matching level, `pid`/`entry` of the running
//! code, the logger `name`, and a message with the user fields appended logfmt-style
//! (`demo API key created api_key=abc`). Field names of tracing events are static, so user fields
//! travel inside the message: readable in text output and still one string in JSON output.

use crate::lua::context;
use crate::lua::errors::{fail, LuaError};
use crate::lua::modules::json;
use crate::process::value::ErrorKind;
use mlua::{Lua, MultiValue, Table, Value};
use std::sync::Arc;
use tracing::field::display;

/// What a logger adds to every line; immutable, so children copy-and-extend it.
#[derive(Debug, Default)]
struct LoggerState {
    name: Option<String>,
    fields: Vec<(String, String)>,
}

#[derive(Clone, Copy)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

pub fn loader(lua: &Lua) -> mlua::Result<Table> {
    // The root logger carries no per-process state, so one table serves every process.
    make_logger(lua, Arc::new(LoggerState::default()))
}

fn make_logger(lua: &Lua, state: Arc<LoggerState>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (name, level) in [
        ("debug", Level::Debug),
        ("info", Level::Info),
        ("warn", Level::Warn),
        ("error", Level::Error),
    ] {
        let st = state.clone();
        t.set(
            name,
            lua.create_function(move |_, args: MultiValue| {
                let mut args = strip_self(args);
                let msg = args.pop_front().unwrap_or(Value::Nil);
                let fields = args.pop_front().unwrap_or(Value::Nil);
                // Bad arguments raise at every level; a record below the configured level
                // is not rendered (its fields can be whole tables, turned into JSON).
                check_arg_types(&msg, &fields, name)?;
                if !enabled(level) {
                    return Ok(());
                }
                let msg = message_arg(msg, name)?;
                let fields = fields_arg(fields, name)?;
                emit(&st, level, &msg, &fields);
                Ok(())
            })?,
        )?;
    }
    let st = state.clone();
    t.set(
        "with",
        lua.create_function(move |lua, args: MultiValue| {
            let mut args = strip_self(args);
            let fields = match args.pop_front().unwrap_or(Value::Nil) {
                Value::Table(t) => render_fields(&t),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "bad argument #1 to 'with' (table expected, got {})",
                        other.type_name()
                    )))
                }
            };
            let mut merged = st.fields.clone();
            merge(&mut merged, fields);
            let child = LoggerState {
                name: st.name.clone(),
                fields: merged,
            };
            make_logger(lua, Arc::new(child))
        })?,
    )?;
    let st = state;
    t.set(
        "named",
        lua.create_function(move |lua, args: MultiValue| {
            let mut args = strip_self(args);
            let name = match args.pop_front().unwrap_or(Value::Nil) {
                Value::String(s) => s.to_string_lossy(),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "bad argument #1 to 'named' (string expected, got {})",
                        other.type_name()
                    )))
                }
            };
            if name.is_empty() {
                return fail(lua, ErrorKind::Invalid, "logger name must not be empty");
            }
            let full = match &st.name {
                Some(parent) => format!("{parent}.{name}"),
                None => name,
            };
            let child = LoggerState {
                name: Some(full),
                fields: st.fields.clone(),
            };
            Ok((Value::Table(make_logger(lua, Arc::new(child))?), Value::Nil))
        })?,
    )?;
    Ok(t)
}

/// Drops the logger itself from `logger:info(...)` so dot and colon calls look alike (§11 #37).
/// A logger is recognised by its `info` function; the root may be behind a read-only proxy, so
/// identity comparison would not work, and no fields table carries an `info` function.
fn strip_self(mut args: MultiValue) -> MultiValue {
    if let Some(Value::Table(t)) = args.front() {
        if matches!(t.get::<Value>("info"), Ok(Value::Function(_))) {
            args.pop_front();
        }
    }
    args
}

fn message_arg(v: Value, fname: &str) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s.to_string_lossy()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(mlua::Error::runtime(format!(
            "bad argument #1 to '{fname}' (string expected, got {})",
            other.type_name()
        ))),
    }
}

/// The type checks of `message_arg` and `fields_arg`, without building anything.
fn check_arg_types(msg: &Value, fields: &Value, fname: &str) -> mlua::Result<()> {
    if !matches!(msg, Value::String(_) | Value::Integer(_) | Value::Number(_)) {
        return Err(mlua::Error::runtime(format!(
            "bad argument #1 to '{fname}' (string expected, got {})",
            msg.type_name()
        )));
    }
    if !matches!(fields, Value::Nil | Value::Table(_)) {
        return Err(mlua::Error::runtime(format!(
            "bad argument #2 to '{fname}' (table expected, got {})",
            fields.type_name()
        )));
    }
    Ok(())
}

fn fields_arg(v: Value, fname: &str) -> mlua::Result<Vec<(String, String)>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Table(t) => Ok(render_fields(&t)),
        other => Err(mlua::Error::runtime(format!(
            "bad argument #2 to '{fname}' (table expected, got {})",
            other.type_name()
        ))),
    }
}

/// Renders a fields table to sorted `(key, value)` pairs; values are final text.
fn render_fields(t: &Table) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let _ = t.for_each(|k: Value, v: Value| {
        let key = match &k {
            Value::String(s) => s.to_string_lossy(),
            Value::Integer(i) => i.to_string(),
            other => other
                .to_string()
                .unwrap_or_else(|_| other.type_name().to_string()),
        };
        out.push((key, render_value(&v)));
        Ok(())
    });
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => quote_if_needed(&s.to_string_lossy()),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) if n.is_nan() => "NaN".into(),
        Value::Number(n) if n.is_infinite() => if *n > 0.0 { "+Inf" } else { "-Inf" }.into(),
        Value::Number(n) => {
            let mut s = String::new();
            json::write_float(&mut s, *n);
            s
        }
        Value::Boolean(b) => b.to_string(),
        Value::Nil => "nil".into(),
        Value::Table(_) => match json::encode_value(v) {
            Ok(s) => s,
            Err(e) => format!("<{e}>"),
        },
        Value::UserData(ud) => match ud.borrow::<LuaError>() {
            // An error object renders as its message, like `tostring(err)` would.
            Ok(e) => quote_if_needed(&e.0.message),
            Err(_) => quote_if_needed(&v.to_string().unwrap_or_else(|_| "userdata".into())),
        },
        other => other
            .to_string()
            .unwrap_or_else(|_| other.type_name().to_string()),
    }
}

/// logfmt quoting: bare when unambiguous, Rust-escaped quotes when empty or containing spaces,
/// quotes, `=` or control characters.
fn quote_if_needed(s: &str) -> String {
    let needs = s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
    if needs {
        format!("{s:?}")
    } else {
        s.to_string()
    }
}

/// Later fields replace earlier ones with the same key, keeping the earlier position.
fn merge(base: &mut Vec<(String, String)>, extra: Vec<(String, String)>) {
    for (k, v) in extra {
        match base.iter_mut().find(|(bk, _)| *bk == k) {
            Some(slot) => slot.1 = v,
            None => base.push((k, v)),
        }
    }
}

/// Whether a `lua` record at `level` would be written (levels must be constants per callsite).
fn enabled(level: Level) -> bool {
    match level {
        Level::Debug => tracing::enabled!(target: "lua", tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(target: "lua", tracing::Level::INFO),
        Level::Warn => tracing::enabled!(target: "lua", tracing::Level::WARN),
        Level::Error => tracing::enabled!(target: "lua", tracing::Level::ERROR),
    }
}

fn emit(state: &LoggerState, level: Level, msg: &str, call_fields: &[(String, String)]) {
    let mut fields = state.fields.clone();
    merge(&mut fields, call_fields.to_vec());
    let mut line = String::with_capacity(msg.len() + 16 * fields.len());
    line.push_str(msg);
    for (k, v) in &fields {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(k);
        line.push('=');
        line.push_str(v);
    }
    let labels = context::current_labels();
    let pid = labels.as_ref().map(|(p, _)| display(p.as_str()));
    let entry = labels.as_ref().map(|(_, e)| display(e.as_str()));
    let logger = state.name.as_deref().map(display);
    // Levels must be constants at each callsite, hence one macro expansion per level.
    macro_rules! ev {
        ($lvl:expr) => {
            tracing::event!(target: "lua", $lvl, pid = pid, entry = entry, logger = logger, "{}", line)
        };
    }
    match level {
        Level::Debug => ev!(tracing::Level::DEBUG),
        Level::Info => ev!(tracing::Level::INFO),
        Level::Warn => ev!(tracing::Level::WARN),
        Level::Error => ev!(tracing::Level::ERROR),
    }
}

#[cfg(test)]
mod tests {
    use crate::lua::modules::json::testing::{run, run_script, state};
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `code` with a text (or JSON) subscriber and returns what it printed.
    fn capture(code: &str, json_out: bool) -> String {
        let buf = Buf::default();
        let w = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .without_time()
            .with_writer(move || w.clone());
        let lua = state();
        if json_out {
            tracing::subscriber::with_default(builder.json().finish(), || run(&lua, code));
        } else {
            tracing::subscriber::with_default(builder.finish(), || run(&lua, code));
        }
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn records_below_the_level_are_not_rendered_but_still_checked() {
        let buf = Buf::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .without_time()
            .with_writer(move || w.clone())
            .finish();
        let lua = state();
        // A field whose rendering fails the test shows the record was not rendered.
        tracing::subscriber::with_default(subscriber, || {
            run(
                &lua,
                r#"local rendered = 0
                   local function probe()
                       return {[setmetatable({}, {__tostring = function()
                           rendered = rendered + 1
                           return "probe"
                       end})] = 1}
                   end
                   logger:info("skipped", probe())
                   logger:debug("quiet", probe())
                   assert(rendered == 0, "a record below the level was rendered")
                   assert(not pcall(logger.info, logger, {}), "bad arguments still raise")
                   logger:warn("kept", probe())
                   assert(rendered == 1, "the probe works")"#,
            )
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains("WARN lua: kept probe=1"), "{out}");
        assert!(!out.contains("skipped") && !out.contains("quiet"), "{out}");
    }

    #[test]
    fn colon_and_dot_calls_log_message_and_fields() {
        let out = capture(
            r#"logger:info("demo API key created", {api_key = "abc123"})
               logger.warn("dot call", {n = 5, f = 1.5, ok = true})
               logger:debug("plain")
               logger.error("failed", {error = errors.new("boom happened")})"#,
            false,
        );
        assert!(
            out.contains(" INFO lua: demo API key created api_key=abc123"),
            "{out}"
        );
        assert!(
            out.contains(" WARN lua: dot call f=1.5 n=5 ok=true"),
            "{out}"
        );
        assert!(out.contains("DEBUG lua: plain"), "{out}");
        assert!(
            out.contains("ERROR lua: failed error=\"boom happened\""),
            "{out}"
        );
    }

    #[test]
    fn tables_are_json_and_children_carry_context() {
        let out = capture(
            r#"local child = logger:with({request_id = "r1"})
               child:info("hello", {data = {a = 1, b = {1, 2}}})
               local named, err = child:named("auth")
               assert(err == nil)
               named.info("named call", {request_id = "r2"})
               local sub = named:named("db")
               sub:info("deeper")"#,
            false,
        );
        assert!(
            out.contains(r#"hello request_id=r1 data={"a":1,"b":[1,2]}"#),
            "{out}"
        );
        assert!(
            out.contains("named call request_id=r2 logger=auth"),
            "{out}"
        );
        assert!(out.contains("deeper request_id=r1 logger=auth.db"), "{out}");
    }

    #[test]
    fn json_output_has_message_and_logger() {
        let out = capture(
            r#"logger:named("svc"):info("ticker started", {pid = "{h|1}"})"#,
            true,
        );
        let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(line["target"], "lua");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], "ticker started pid={h|1}");
        assert_eq!(line["fields"]["logger"], "svc");
    }

    #[test]
    fn bad_arguments() {
        let lua = state();
        run(
            &lua,
            r#"
            local l, err = logger:named("")
            assert(l == nil and errors.is(err, errors.INVALID))
            l, err = logger.named("")
            assert(l == nil and errors.is(err, errors.INVALID))
            assert(not pcall(logger.named, logger, 5))
            assert(not pcall(logger.with, logger, "x"))
            assert(not pcall(logger.info, logger, {}))
            assert(not pcall(logger.info, "m", "not a table"))
            assert(pcall(logger.info, "m", nil))
            "#,
        );
    }

    #[test]
    fn lua_script_passes() {
        let lua = state();
        run_script(
            &lua,
            "logger_test.lua",
            include_str!("../../../tests/lua/logger_test.lua"),
        );
    }
}
