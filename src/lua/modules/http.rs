//! The `http` module (§6.1): the request and response of the endpoint call being served.
//! Status and headers are buffered until the handler returns; the server sends them then.

use crate::lua::context;
use crate::lua::errors::{fail, ok};
use crate::process::value::ErrorKind;
use bytes::Bytes;
use hyper::HeaderMap;
use mlua::{Lua, Table, UserData, UserDataMethods};
use std::cell::RefCell;
use std::rc::Rc;

/// The request/response state of one endpoint call.
pub struct HttpFrame {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub remote_addr: String,
    pub params: Vec<(String, String)>,
    pub response: RefCell<ResponseState>,
}

#[derive(Default)]
pub struct ResponseState {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Any of set_status/set_header/write*/flush was called: the handler answered.
    pub touched: bool,
    /// The body started (write*, flush): status and headers are final from here on.
    pub started: bool,
}

impl ResponseState {
    fn set_header(&mut self, name: &str, value: String) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value));
        self.touched = true;
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn remove_header(&mut self, name: &str) -> Option<String> {
        let pos = self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))?;
        Some(self.headers.remove(pos).1)
    }
}

pub fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

fn frame() -> Option<Rc<HttpFrame>> {
    context::with_current(|c| c.http.clone()).flatten()
}

/// `max_body` from `http.request{max_body}`: a larger body reads as `INVALID`.
struct Request(Rc<HttpFrame>, usize);
struct Response(Rc<HttpFrame>);

const DEFAULT_MAX_BODY: usize = 125_829_120;

fn max_body_option(opts: &mlua::Value) -> mlua::Result<usize> {
    let mlua::Value::Table(t) = opts else {
        return Ok(DEFAULT_MAX_BODY);
    };
    match t.get::<Option<i64>>("max_body")? {
        Some(n) if n > 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => Ok(DEFAULT_MAX_BODY),
    }
}

/// Status and headers cannot change once the body started (§6.1).
fn headers_sent(lua: &Lua) -> mlua::Result<Option<mlua::Value>> {
    Ok(Some(crate::lua::errors::error_object(
        lua,
        ErrorKind::Invalid,
        "headers already sent",
    )?))
}

impl UserData for Request {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("method", |_, this, ()| Ok(this.0.method.clone()));
        m.add_method("path", |_, this, ()| Ok(this.0.path.clone()));
        m.add_method("param", |_, this, name: String| {
            Ok(this
                .0
                .params
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone()))
        });
        m.add_method("params", |lua, this, ()| {
            let t = lua.create_table()?;
            for (k, v) in &this.0.params {
                t.set(k.as_str(), v.as_str())?;
            }
            Ok(t)
        });
        m.add_method("query", |_, this, name: String| {
            Ok(this
                .0
                .query
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone()))
        });
        m.add_method("query_params", |lua, this, ()| {
            let t = lua.create_table()?;
            for (k, v) in &this.0.query {
                let joined = match t.get::<Option<String>>(k.as_str())? {
                    Some(prev) => format!("{prev},{v}"),
                    None => v.clone(),
                };
                t.set(k.as_str(), joined)?;
            }
            Ok(t)
        });
        m.add_method("header", |_, this, name: String| {
            let values: Vec<&str> = this
                .0
                .headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            Ok((!values.is_empty()).then(|| values.join(", ")))
        });
        m.add_method("headers", |lua, this, ()| {
            let t = lua.create_table()?;
            for (k, v) in this.0.headers.iter() {
                if let Ok(v) = v.to_str() {
                    t.set(k.as_str(), v)?;
                }
            }
            Ok(t)
        });
        m.add_method("content_type", |_, this, ()| {
            Ok(this
                .0
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string))
        });
        m.add_method("content_length", |_, this, ()| {
            Ok(this
                .0
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(-1))
        });
        m.add_method("host", |_, this, ()| {
            Ok(this
                .0
                .headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string())
        });
        m.add_method("remote_addr", |_, this, ()| Ok(this.0.remote_addr.clone()));
        m.add_method("body", |lua, this, ()| {
            if this.0.body.len() > this.1 {
                return fail(lua, ErrorKind::Invalid, "request body too large");
            }
            ok(lua, lua.create_string(&this.0.body)?)
        });
        m.add_method("has_body", |_, this, ()| Ok(!this.0.body.is_empty()));
        m.add_method("body_json", |lua, this, ()| {
            if this.0.body.is_empty() {
                return fail(lua, ErrorKind::Invalid, "empty body");
            }
            if this.0.body.len() > this.1 {
                return fail(lua, ErrorKind::Invalid, "request body too large");
            }
            match serde_json::from_slice::<serde_json::Value>(&this.0.body) {
                Ok(j) => ok(lua, crate::lua::convert::json_to_lua(lua, &j)?),
                Err(e) => fail(lua, ErrorKind::Invalid, format!("invalid JSON: {e}")),
            }
        });
        m.add_method("accepts", |_, this, t: String| {
            let accept = this
                .0
                .headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Ok(accept.split(',').any(|a| {
                let a = a.split(';').next().unwrap_or("").trim();
                a == t || a == "*/*"
            }))
        });
        m.add_method("is_content_type", |_, this, p: String| {
            Ok(this
                .0
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with(&p)))
        });
    }
}

fn value_string(v: &mlua::Value) -> mlua::Result<String> {
    Ok(match v {
        mlua::Value::String(s) => s.to_str()?.to_string(),
        mlua::Value::Integer(i) => i.to_string(),
        mlua::Value::Number(n) => n.to_string(),
        mlua::Value::Boolean(b) => b.to_string(),
        other => {
            return Err(mlua::Error::runtime(format!(
                "expected a string, got {}",
                other.type_name()
            )))
        }
    })
}

impl UserData for Response {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("set_status", |lua, this, code: i64| {
            if !(100..=999).contains(&code) {
                return Ok(Some(crate::lua::errors::error_object(
                    lua,
                    ErrorKind::Invalid,
                    "invalid status code",
                )?));
            }
            let mut r = this.0.response.borrow_mut();
            if r.started {
                return headers_sent(lua);
            }
            r.status = Some(code as u16);
            r.touched = true;
            Ok(None)
        });
        m.add_method(
            "set_header",
            |lua, this, (name, value): (String, mlua::Value)| {
                let value = value_string(&value)?;
                let mut r = this.0.response.borrow_mut();
                if r.started {
                    return headers_sent(lua);
                }
                r.set_header(&name, value);
                Ok(None)
            },
        );
        m.add_method("set_content_type", |lua, this, ct: String| {
            let mut r = this.0.response.borrow_mut();
            if r.started {
                return headers_sent(lua);
            }
            r.set_header("Content-Type", ct);
            Ok(None)
        });
        m.add_method("write", |_, this, s: mlua::Value| {
            let bytes = match &s {
                mlua::Value::String(s) => s.as_bytes().to_vec(),
                other => value_string(other)?.into_bytes(),
            };
            let mut r = this.0.response.borrow_mut();
            r.body.extend_from_slice(&bytes);
            r.touched = true;
            r.started = true;
            Ok(mlua::Value::Nil)
        });
        m.add_method("write_json", |lua, this, v: mlua::Value| {
            let encoded = match crate::lua::modules::json::encode_value(&v) {
                Ok(s) => s,
                Err(e) => {
                    return Ok(Some(crate::lua::errors::error_object(
                        lua,
                        ErrorKind::Internal,
                        e,
                    )?))
                }
            };
            let mut r = this.0.response.borrow_mut();
            if !r.started && r.header("Content-Type").is_none() {
                r.set_header("Content-Type", "application/json".into());
            }
            r.body.extend_from_slice(encoded.as_bytes());
            r.touched = true;
            r.started = true;
            Ok(None)
        });
        m.add_method("flush", |_, this, ()| {
            let mut r = this.0.response.borrow_mut();
            r.touched = true;
            r.started = true;
            Ok(mlua::Value::Nil)
        });
        m.add_method("set_transfer", |_, this, mode: String| {
            if mode != "chunked" && mode != "sse" {
                return Err(mlua::Error::runtime(format!(
                    "unsupported transfer mode {mode}"
                )));
            }
            this.0.response.borrow_mut().touched = true;
            Ok(mlua::Value::Nil)
        });
        m.add_method("write_event", |_, this, ev: Table| {
            let name: Option<String> = ev.get("name")?;
            let data: mlua::Value = ev.get("data")?;
            let data =
                crate::lua::modules::json::encode_value(&data).map_err(mlua::Error::runtime)?;
            let mut r = this.0.response.borrow_mut();
            if !r.started && r.header("Content-Type").is_none() {
                r.set_header("Content-Type", "text/event-stream".into());
            }
            if let Some(n) = name {
                r.body.extend_from_slice(format!("event: {n}\n").as_bytes());
            }
            r.body
                .extend_from_slice(format!("data: {data}\n\n").as_bytes());
            r.touched = true;
            r.started = true;
            Ok(mlua::Value::Nil)
        });
    }
}

pub fn loader(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "request",
        lua.create_function(|lua, opts: mlua::Value| match frame() {
            Some(f) => ok(lua, Request(f, max_body_option(&opts)?)),
            None => fail(lua, ErrorKind::Internal, "no HTTP request in this context"),
        })?,
    )?;
    t.set(
        "response",
        lua.create_function(|lua, ()| match frame() {
            Some(f) => ok(lua, Response(f)),
            None => fail(lua, ErrorKind::Internal, "no HTTP request in this context"),
        })?,
    )?;
    let methods = lua.create_table()?;
    for m in ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] {
        methods.set(m, m)?;
    }
    t.set("METHOD", methods)?;
    let status = lua.create_table()?;
    for (name, code) in [
        ("OK", 200),
        ("CREATED", 201),
        ("ACCEPTED", 202),
        ("NO_CONTENT", 204),
        ("PARTIAL_CONTENT", 206),
        ("MOVED_PERMANENTLY", 301),
        ("FOUND", 302),
        ("SEE_OTHER", 303),
        ("NOT_MODIFIED", 304),
        ("TEMPORARY_REDIRECT", 307),
        ("PERMANENT_REDIRECT", 308),
        ("BAD_REQUEST", 400),
        ("UNAUTHORIZED", 401),
        ("PAYMENT_REQUIRED", 402),
        ("FORBIDDEN", 403),
        ("NOT_FOUND", 404),
        ("METHOD_NOT_ALLOWED", 405),
        ("NOT_ACCEPTABLE", 406),
        ("CONFLICT", 409),
        ("GONE", 410),
        ("UNPROCESSABLE", 422),
        ("TOO_MANY_REQUESTS", 429),
        ("INTERNAL_ERROR", 500),
        ("INTERNAL_SERVER_ERROR", 500),
        ("NOT_IMPLEMENTED", 501),
        ("BAD_GATEWAY", 502),
        ("SERVICE_UNAVAILABLE", 503),
        ("GATEWAY_TIMEOUT", 504),
        ("VERSION_NOT_SUPPORTED", 505),
    ] {
        status.set(name, code)?;
    }
    t.set("STATUS", status)?;
    let content = lua.create_table()?;
    content.set("JSON", "application/json")?;
    content.set("FORM", "application/x-www-form-urlencoded")?;
    content.set("MULTIPART", "multipart/form-data")?;
    content.set("TEXT", "text/plain")?;
    content.set("STREAM", "application/octet-stream")?;
    t.set("CONTENT", content)?;
    let transfer = lua.create_table()?;
    transfer.set("CHUNKED", "chunked")?;
    transfer.set("SSE", "sse")?;
    t.set("TRANSFER", transfer)?;
    let errs = lua.create_table()?;
    for e in [
        "PARSE_FAILED",
        "INVALID_STATE",
        "WRITE_FAILED",
        "STREAM_ERROR",
    ] {
        errs.set(e, e)?;
    }
    t.set("ERROR", errs)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::parse_query;

    #[test]
    fn query_strings_decode() {
        let q = parse_query(Some("x-auth-token=a%2Bb%3D&empty=&flag&sp=a+b"));
        assert_eq!(q[0], ("x-auth-token".into(), "a+b=".into()));
        assert_eq!(q[1], ("empty".into(), "".into()));
        assert_eq!(q[2], ("flag".into(), "".into()));
        assert_eq!(q[3], ("sp".into(), "a b".into()));
    }
}
