//! Owned, thread-safe message values: what crosses a process boundary (spawn args, payloads, results).
//!
//! No Lua value ever crosses processes; bindings deep-copy into `Value` on send and back on receive.
//! Strings are `Bytes` so one long payload can be shared by many deliveries without copying.

use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Bytes),
    Table(Arc<Table>),
    Error(Arc<ErrorValue>),
}

/// A Lua table snapshot: the 1..n sequence part and the remaining key/value pairs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub array: Vec<Value>,
    pub map: Vec<(Value, Value)>,
}

/// The error kinds scripts see (`errors.NOT_FOUND` …); strings follow Wippy's Go values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Unknown,
    Invalid,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Timeout,
    Canceled,
    Unavailable,
    Internal,
    Conflict,
    RateLimited,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Unknown,
        ErrorKind::Invalid,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::PermissionDenied,
        ErrorKind::Timeout,
        ErrorKind::Canceled,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
        ErrorKind::Conflict,
        ErrorKind::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unknown => "",
            ErrorKind::Invalid => "Invalid",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::AlreadyExists => "AlreadyExists",
            ErrorKind::PermissionDenied => "PermissionDenied",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Canceled => "Canceled",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::Internal => "Internal",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::RateLimited => "RateLimited",
        }
    }

    /// The constant name scripts use: `errors.NOT_FOUND`.
    pub fn const_name(self) -> &'static str {
        match self {
            ErrorKind::Unknown => "UNKNOWN",
            ErrorKind::Invalid => "INVALID",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::Canceled => "CANCELED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Internal => "INTERNAL",
            ErrorKind::Conflict => "CONFLICT",
            ErrorKind::RateLimited => "RATE_LIMITED",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An error object as scripts see it (`err:message()`, `err:kind()` …).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorValue {
    pub message: String,
    pub kind: ErrorKind,
    pub retryable: Option<bool>,
    pub details: Option<Value>,
}

impl ErrorValue {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorValue {
            message: message.into(),
            kind,
            retryable: Some(false),
            details: None,
        }
    }
}

impl std::fmt::Display for ErrorValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Value {
    pub fn str(s: impl Into<Bytes>) -> Value {
        Value::Str(s.into())
    }

    pub fn table(array: Vec<Value>, map: Vec<(Value, Value)>) -> Value {
        Value::Table(Arc::new(Table { array, map }))
    }

    /// A string-keyed record, the usual shape of event and relay payloads.
    /// Keys are literals, shared rather than copied: records are made per event and message.
    pub fn record(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
        let map = fields
            .into_iter()
            .filter(|(_, v)| !matches!(v, Value::Nil))
            .map(|(k, v)| (Value::Str(Bytes::from_static(k.as_bytes())), v))
            .collect();
        Value::table(Vec::new(), map)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Field lookup on a string-keyed table.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Table(t) => t
                .map
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// JSON form (used by the WebSocket relay and logs). Strings that are not UTF-8 become base64.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Nil => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Str(b) => match std::str::from_utf8(b) {
                Ok(s) => J::String(s.to_owned()),
                Err(_) => {
                    use base64::Engine;
                    J::String(base64::engine::general_purpose::STANDARD.encode(b))
                }
            },
            Value::Table(t) => {
                if t.map.is_empty() {
                    J::Array(t.array.iter().map(Value::to_json).collect())
                } else {
                    let mut obj = serde_json::Map::new();
                    for (i, v) in t.array.iter().enumerate() {
                        obj.insert((i + 1).to_string(), v.to_json());
                    }
                    for (k, v) in &t.map {
                        let key = match k {
                            Value::Str(b) => String::from_utf8_lossy(b).into_owned(),
                            Value::Int(i) => i.to_string(),
                            Value::Float(f) => f.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => continue,
                        };
                        obj.insert(key, v.to_json());
                    }
                    J::Object(obj)
                }
            }
            Value::Error(e) => J::String(e.message.clone()),
        }
    }

    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Nil,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => Value::str(s.clone()),
            J::Array(a) => Value::table(a.iter().map(Value::from_json).collect(), Vec::new()),
            J::Object(o) => Value::from_json_object(o),
        }
    }

    /// A JSON object as a table, without wrapping (and cloning) it into a `serde_json::Value`.
    pub fn from_json_object(o: &serde_json::Map<String, serde_json::Value>) -> Value {
        Value::table(
            Vec::new(),
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (Value::str(k.clone()), Value::from_json(v)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_drops_nil_and_reads_back() {
        let v = Value::record([("a", Value::Int(1)), ("b", Value::Nil)]);
        assert_eq!(v.get("a"), Some(&Value::Int(1)));
        assert_eq!(v.get("b"), None);
    }

    #[test]
    fn json_round_trip_keeps_integers() {
        let j: serde_json::Value = serde_json::json!({"x": 1, "y": 1.5, "z": [true, "s"]});
        let v = Value::from_json(&j);
        assert_eq!(v.to_json(), j);
    }

    #[test]
    fn error_kind_strings_round_trip() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
        }
    }
}
