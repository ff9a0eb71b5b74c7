//! Process identifiers and the signals a mailbox carries.

use crate::process::value::Value;
use std::fmt;
use std::sync::Arc;

/// `{host|id}`. Equality and hashing use the never-reused numeric id only.
#[derive(Clone)]
pub struct Pid {
    id: u64,
    host: Arc<str>,
}

impl Pid {
    pub fn new(id: u64, host: Arc<str>) -> Self {
        Pid { id, host }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The numeric id inside a PID string, or `None` if `s` is not PID-shaped.
    pub fn parse_id(s: &str) -> Option<u64> {
        let inner = s.strip_prefix('{')?.strip_suffix('}')?;
        let (_, id) = inner.rsplit_once('|')?;
        id.parse().ok()
    }
}

impl PartialEq for Pid {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Pid {}
impl std::hash::Hash for Pid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}|{}}}", self.host, self.id)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A message between processes: owned payloads, so nothing is shared with the sender.
#[derive(Debug, Clone)]
pub struct Message {
    pub from: Option<Pid>,
    pub topic: Arc<str>,
    pub payloads: Vec<Value>,
}

/// How a process ended. `Error` is an abnormal exit (crosses links).
#[derive(Debug, Clone, PartialEq)]
pub enum ExitResult {
    Value(Value),
    Error(String),
}

impl ExitResult {
    pub fn is_error(&self) -> bool {
        matches!(self, ExitResult::Error(_))
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    Exit { from: Pid, result: ExitResult },
    LinkDown { from: Pid, error: String },
    Cancel { from: Option<Pid>, reason: String },
    Outdated { sources: Vec<String> },
}

/// What a mailbox carries. Links are resolved by the receiver (it knows whether it traps them).
#[derive(Debug, Clone)]
pub enum Signal {
    Message(Message),
    Event(Event),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_string_round_trips_its_id() {
        let pid = Pid::new(42, Arc::from("app:processes"));
        assert_eq!(pid.to_string(), "{app:processes|42}");
        assert_eq!(Pid::parse_id(&pid.to_string()), Some(42));
        assert_eq!(Pid::parse_id("ticker"), None);
    }
}
