//! The `errors` global and the error object scripts receive in every `value, err` return.

use crate::process::value::{ErrorKind, ErrorValue};
use mlua::{Lua, MetaMethod, UserData, UserDataMethods};
use std::sync::Arc;

/// Lua-side error object; wraps an immutable `ErrorValue` so it can also travel in messages.
#[derive(Clone, Debug)]
pub struct LuaError(pub Arc<ErrorValue>);

impl UserData for LuaError {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("message", |_, this, ()| Ok(this.0.message.clone()));
        methods.add_method("kind", |_, this, ()| Ok(this.0.kind.as_str()));
        methods.add_method("retryable", |_, this, ()| Ok(this.0.retryable));
        methods.add_method("details", |lua, this, ()| match &this.0.details {
            Some(d) => crate::lua::convert::to_lua(lua, d),
            None => Ok(mlua::Value::Nil),
        });
        methods.add_method("stack", |_, _, ()| Ok(mlua::Value::Nil));
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(this.0.message.clone())
        });
        methods.add_meta_method(MetaMethod::Eq, |_, this, other: mlua::AnyUserData| {
            Ok(other
                .borrow::<LuaError>()
                .map(|o| Arc::ptr_eq(&o.0, &this.0) || *o.0 == *this.0)
                .unwrap_or(false))
        });
    }
}

/// Builds an error object value.
pub fn error_object(
    lua: &Lua,
    kind: ErrorKind,
    message: impl Into<String>,
) -> mlua::Result<mlua::Value> {
    lua.create_userdata(LuaError(Arc::new(ErrorValue::new(kind, message))))
        .map(mlua::Value::UserData)
}

/// The conventional failure return: `nil, err`.
pub fn fail(
    lua: &Lua,
    kind: ErrorKind,
    message: impl Into<String>,
) -> mlua::Result<(mlua::Value, mlua::Value)> {
    Ok((mlua::Value::Nil, error_object(lua, kind, message)?))
}

/// Failure return for functions whose value slot is a boolean (`false, err`).
pub fn fail_false(
    lua: &Lua,
    kind: ErrorKind,
    message: impl Into<String>,
) -> mlua::Result<(mlua::Value, mlua::Value)> {
    Ok((
        mlua::Value::Boolean(false),
        error_object(lua, kind, message)?,
    ))
}

/// Success return: `value, nil`.
pub fn ok<T: mlua::IntoLua>(lua: &Lua, value: T) -> mlua::Result<(mlua::Value, mlua::Value)> {
    Ok((value.into_lua(lua)?, mlua::Value::Nil))
}

/// Reads an error object back (for `errors.is`, `errors.wrap`, results).
pub fn as_error_value(v: &mlua::Value) -> Option<Arc<ErrorValue>> {
    match v {
        mlua::Value::UserData(ud) => ud.borrow::<LuaError>().ok().map(|e| e.0.clone()),
        _ => None,
    }
}

/// Any Lua error value (a raised string, an error object, an mlua error) as an `ErrorValue`.
pub fn from_mlua_error(err: &mlua::Error) -> ErrorValue {
    match err {
        mlua::Error::CallbackError { cause, .. } => from_mlua_error(cause),
        mlua::Error::WithContext { cause, .. } => from_mlua_error(cause),
        mlua::Error::ExternalError(e) => {
            if let Some(ev) = e.downcast_ref::<ErrorValue>() {
                ev.clone()
            } else {
                ErrorValue::new(ErrorKind::Unknown, e.to_string())
            }
        }
        mlua::Error::RuntimeError(m) => ErrorValue::new(ErrorKind::Unknown, m.clone()),
        other => ErrorValue::new(ErrorKind::Unknown, other.to_string()),
    }
}

impl std::error::Error for ErrorValue {}

/// Registers the `errors` global table.
pub fn register(lua: &Lua, globals: &mlua::Table) -> mlua::Result<()> {
    let errors = lua.create_table()?;
    for kind in ErrorKind::ALL {
        errors.set(kind.const_name(), kind.as_str())?;
    }
    errors.set(
        "new",
        lua.create_function(|lua, arg: mlua::Value| {
            let ev = match arg {
                mlua::Value::String(s) => ErrorValue {
                    message: s.to_str()?.to_string(),
                    kind: ErrorKind::Unknown,
                    retryable: None,
                    details: None,
                },
                mlua::Value::Table(t) => {
                    let message: Option<String> = t.get("message")?;
                    let kind: Option<String> = t.get("kind")?;
                    let retryable: Option<bool> = t.get("retryable")?;
                    let details: mlua::Value = t.get("details")?;
                    ErrorValue {
                        message: message.unwrap_or_default(),
                        kind: kind
                            .and_then(|k| ErrorKind::parse(&k))
                            .unwrap_or(ErrorKind::Unknown),
                        retryable,
                        details: match details {
                            mlua::Value::Nil => None,
                            d => Some(
                                crate::lua::convert::from_lua(&d).map_err(mlua::Error::external)?,
                            ),
                        },
                    }
                }
                _ => {
                    return Err(mlua::Error::runtime(
                        "errors.new expects a string or a table",
                    ))
                }
            };
            lua.create_userdata(LuaError(Arc::new(ev)))
        })?,
    )?;
    errors.set(
        "wrap",
        lua.create_function(|lua, (err, msg): (mlua::Value, String)| {
            let inner = match as_error_value(&err) {
                Some(e) => (*e).clone(),
                None => ErrorValue::new(ErrorKind::Unknown, lua_tostring(&err)),
            };
            let wrapped = ErrorValue {
                message: format!("{msg}: {}", inner.message),
                ..inner
            };
            lua.create_userdata(LuaError(Arc::new(wrapped)))
        })?,
    )?;
    errors.set(
        "is",
        lua.create_function(|_, (err, kind): (mlua::Value, mlua::Value)| {
            let Some(e) = as_error_value(&err) else {
                return Ok(false);
            };
            Ok(match kind {
                mlua::Value::String(s) => e.kind.as_str() == s.to_str()?.as_ref() as &str,
                other => as_error_value(&other)
                    .map(|k| k.kind == e.kind)
                    .unwrap_or(false),
            })
        })?,
    )?;
    errors.set(
        "call_stack",
        lua.create_function(|_, _: mlua::Value| Ok(mlua::Value::Nil))?,
    )?;
    globals.set("errors", crate::lua::sandbox::read_only(lua, errors)?)?;
    Ok(())
}

fn lua_tostring(v: &mlua::Value) -> String {
    match v {
        mlua::Value::String(s) => s.to_string_lossy(),
        mlua::Value::Nil => "nil".into(),
        other => format!("{other:?}"),
    }
}
