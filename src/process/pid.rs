//! Process identifiers and the signals a mailbox carries.

use crate::process::value::Value;
use std::fmt;
use std::sync::Arc;

/// `{host|id}`. Equality and hashing use the never-reused numeric id only.
#[derive(Clone)]
pub struct Pid {
    id: u64,
    host: Host,
}

/// A pid's host label. The runtime's own pids carry an interned label, so cloning a pid (every
/// message carries its sender's) copies a pointer: with a shared `Arc` the one reference
/// count of a busy host moved between the cores' caches on every message sent across workers.
#[derive(Clone)]
enum Host {
    Interned(&'static str),
    /// Read from a script's PID string that names no live process (a dead pid): any text, so
    /// it is not interned.
    Parsed(Arc<str>),
}

/// The interned copy of `label`. Labels are the registry's hosts and servers, a set that only
/// grows by editing the registry, so they are kept for the life of the runtime.
pub fn intern_label(label: &str) -> &'static str {
    static LABELS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut labels = LABELS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = labels.iter().find(|l| **l == label) {
        return found;
    }
    let leaked: &'static str = Box::leak(label.into());
    labels.push(leaked);
    leaked
}

impl Pid {
    /// A pid the runtime allocates, on a host label from `intern_label`.
    pub fn new(id: u64, host: &'static str) -> Self {
        Pid {
            id,
            host: Host::Interned(host),
        }
    }

    /// The pid a PID string names when its process is gone.
    pub fn parsed(id: u64, host: &str) -> Self {
        Pid {
            id,
            host: Host::Parsed(Arc::from(host)),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The host label, when it is an interned one (every pid the runtime allocates).
    pub fn interned_host(&self) -> Option<&'static str> {
        match self.host {
            Host::Interned(h) => Some(h),
            Host::Parsed(_) => None,
        }
    }

    pub fn host(&self) -> &str {
        match &self.host {
            Host::Interned(h) => h,
            Host::Parsed(h) => h,
        }
    }

    /// The numeric id inside a PID string (`{host|id}`), or `None` if `s` is not PID-shaped.
    pub fn parse_id(s: &str) -> Option<u64> {
        Pid::parse_id_bytes(s.as_bytes())
    }

    /// `parse_id` of raw bytes (a Lua string): the id is the ASCII digits between the last
    /// `|` and the closing brace, so the text need not be checked as UTF-8 first.
    pub fn parse_id_bytes(s: &[u8]) -> Option<u64> {
        let [b'{', inner @ .., b'}'] = s else {
            return None;
        };
        let bar = inner.iter().rposition(|&b| b == b'|')?;
        let digits = &inner[bar + 1..];
        if digits.is_empty() || digits.len() > 20 {
            return None;
        }
        digits.iter().try_fold(0u64, |id, &d| {
            if d.is_ascii_digit() {
                id.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            } else {
                None
            }
        })
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
        write!(f, "{{{}|{}}}", self.host(), self.id)
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
        let pid = Pid::new(42, intern_label("app:processes"));
        assert_eq!(pid.to_string(), "{app:processes|42}");
        assert_eq!(Pid::parse_id(&pid.to_string()), Some(42));
        assert_eq!(Pid::parse_id("ticker"), None);
        let dead = Pid::parsed(7, "gone|host");
        assert_eq!(dead.to_string(), "{gone|host|7}");
        assert_eq!(Pid::parse_id(&dead.to_string()), Some(7));
    }

    #[test]
    fn parse_id_takes_only_digits_after_the_last_bar() {
        let cases: [(&str, Option<u64>); 12] = [
            ("{h|0}", Some(0)),
            ("{a|b|18446744073709551615}", Some(u64::MAX)),
            ("{h|18446744073709551616}", None),
            ("{h|}", None),
            ("{h|+1}", None),
            ("{h|1 }", None),
            ("{h|1", None),
            ("h|1}", None),
            ("{}", None),
            ("{1}", None),
            ("", None),
            ("{|5}", Some(5)),
        ];
        for (text, want) in cases {
            assert_eq!(Pid::parse_id(text), want, "{text:?}");
        }
    }

    #[test]
    fn labels_are_interned_once() {
        let a = intern_label("test:intern");
        let b = intern_label(&String::from("test:intern"));
        assert!(std::ptr::eq(a, b));
    }
}
