//! The `store.memory` backend: a thread-safe, ordered, versioned key/value map with per-key TTL.
//!
//! Expired keys are invisible at once and physically removed by `sweep` (the runtime calls it
//! every `cleanup_interval`) or when a write needs their room.

use crate::process::value::{ErrorKind, Value};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// `max_size` when the entry says `0` (§1.7).
pub const DEFAULT_MAX_SIZE: usize = 10_000;
/// `cleanup_interval` when the entry gives none.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(300);

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("store is full ({0} keys)")]
    Full(usize),
    #[error("key already exists")]
    AlreadyExists,
    #[error("version mismatch")]
    Conflict,
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// The kind scripts see (§6.8).
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Full(_) => ErrorKind::Internal,
            StoreError::AlreadyExists => ErrorKind::AlreadyExists,
            StoreError::Conflict => ErrorKind::Conflict,
            StoreError::Invalid(_) => ErrorKind::Invalid,
        }
    }

    /// A version conflict is worth retrying after a re-read; nothing else is.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Conflict)
    }
}

/// Options of a conditional write (`s:put`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// `None` or zero = no expiry.
    pub ttl: Option<Duration>,
    /// Fail with `AlreadyExists` when the key is live.
    pub only_if_absent: bool,
    /// Fail with `Conflict` unless the live key has exactly this version.
    pub if_version: Option<u64>,
}

struct Slot {
    value: Value,
    version: u64,
    expires: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

#[derive(Default)]
struct Inner {
    map: BTreeMap<String, Slot>,
    /// Last version handed out. Versions come from one store-wide counter so a key that is
    /// deleted and recreated never reuses an old version (no ABA for `if_version`).
    version: u64,
}

/// `only_if_absent` / `if_version` against the live version of the key, if any.
fn check_conditions(opts: &PutOptions, current: Option<u64>) -> Result<(), StoreError> {
    if opts.only_if_absent && current.is_some() {
        return Err(StoreError::AlreadyExists);
    }
    if let Some(want) = opts.if_version {
        if current != Some(want) {
            return Err(StoreError::Conflict);
        }
    }
    Ok(())
}

pub struct MemoryStore {
    max_size: usize,
    cleanup_interval: Duration,
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_size", &self.max_size)
            .field("cleanup_interval", &self.cleanup_interval)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(DEFAULT_MAX_SIZE, DEFAULT_CLEANUP_INTERVAL)
    }
}

impl MemoryStore {
    /// `max_size == 0` means the default (10000); a zero interval means the default (5m).
    pub fn new(max_size: usize, cleanup_interval: Duration) -> Self {
        MemoryStore {
            max_size: if max_size == 0 {
                DEFAULT_MAX_SIZE
            } else {
                max_size
            },
            cleanup_interval: if cleanup_interval.is_zero() {
                DEFAULT_CLEANUP_INTERVAL
            } else {
                cleanup_interval
            },
            inner: RwLock::new(Inner::default()),
        }
    }

    /// From the registry entry.
    pub fn from_config(cfg: &crate::registry::kinds::MemoryStore) -> Self {
        MemoryStore::new(cfg.max_size, cfg.cleanup_interval)
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    pub fn cleanup_interval(&self) -> Duration {
        self.cleanup_interval
    }

    // A panic while holding the lock cannot leave the map half-updated (every write is a single
    // insert/remove), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.entry(key).map(|(v, _)| v)
    }

    /// Value and version of a live key.
    pub fn entry(&self, key: &str) -> Option<(Value, u64)> {
        let now = Instant::now();
        let inner = self.read();
        inner
            .map
            .get(key)
            .filter(|s| s.live(now))
            .map(|s| (s.value.clone(), s.version))
    }

    pub fn has(&self, key: &str) -> bool {
        let now = Instant::now();
        self.read().map.get(key).is_some_and(|s| s.live(now))
    }

    /// Unconditional write; `ttl` `None` or zero = no expiry.
    pub fn set(&self, key: &str, value: Value, ttl: Option<Duration>) -> Result<(), StoreError> {
        self.put(
            key,
            value,
            PutOptions {
                ttl,
                ..PutOptions::default()
            },
        )
        .map(|_| ())
    }

    /// Conditional write; returns the new version.
    pub fn put(&self, key: &str, value: Value, opts: PutOptions) -> Result<u64, StoreError> {
        if opts.only_if_absent && opts.if_version.is_some() {
            return Err(StoreError::Invalid(
                "only_if_absent and if_version are mutually exclusive".into(),
            ));
        }
        let now = Instant::now();
        let expires = opts
            .ttl
            .filter(|d| !d.is_zero())
            .and_then(|d| now.checked_add(d));
        let mut inner = self.write();
        // One tree walk for the common case (a key that exists, or room for a new one); only a
        // full store pays a sweep and a second walk.
        let next = inner.version + 1;
        if let Some(slot) = inner.map.get_mut(key) {
            check_conditions(&opts, slot.live(now).then_some(slot.version))?;
            *slot = Slot {
                value,
                version: next,
                expires,
            };
            inner.version = next;
            return Ok(next);
        }
        check_conditions(&opts, None)?;
        // An expired slot still occupies room, so overwriting it never needs more.
        if inner.map.len() >= self.max_size {
            inner.map.retain(|_, s| s.live(now));
            if inner.map.len() >= self.max_size {
                return Err(StoreError::Full(self.max_size));
            }
        }
        inner.version += 1;
        let version = inner.version;
        inner.map.insert(
            key.to_owned(),
            Slot {
                value,
                version,
                expires,
            },
        );
        Ok(version)
    }

    /// Removes `key`; `true` only if it was live.
    pub fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        self.write().map.remove(key).is_some_and(|s| s.live(now))
    }

    /// Live entries in key order: keys starting with `prefix`, strictly after `after`, at most
    /// `limit` of them (`0` = no limit). Returns the page, the cursor to pass as `after` for the
    /// next page (the last key returned, `None` when the page is empty) and whether more follow.
    pub fn list(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(String, Value)>, Option<String>, bool) {
        let (items, cursor, more) = self.list_entries(prefix, after, limit);
        (
            items.into_iter().map(|(k, v, _)| (k, v)).collect(),
            cursor,
            more,
        )
    }

    /// `list` with each entry's version.
    pub fn list_entries(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(String, Value, u64)>, Option<String>, bool) {
        let now = Instant::now();
        let prefix = prefix.unwrap_or("");
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let inner = self.read();
        let mut live = inner
            .map
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, s)| s.live(now));
        let mut items = Vec::new();
        let mut more = false;
        for (k, s) in live.by_ref() {
            if limit != 0 && items.len() == limit {
                more = true;
                break;
            }
            items.push((k.clone(), s.value.clone(), s.version));
        }
        let cursor = items.last().map(|(k, _, _)| k.clone());
        (items, cursor, more)
    }

    /// Drops expired keys.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.write().map.retain(|_, s| s.live(now));
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.read().map.values().filter(|s| s.live(now)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys held, expired ones included (what `sweep` shrinks).
    pub fn raw_len(&self) -> usize {
        self.read().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread::sleep;

    fn s(v: &str) -> Value {
        Value::str(v.to_owned())
    }

    fn store(max: usize) -> MemoryStore {
        MemoryStore::new(max, Duration::from_secs(60))
    }

    #[test]
    fn zero_config_means_defaults() {
        let m = MemoryStore::new(0, Duration::ZERO);
        assert_eq!(m.max_size(), DEFAULT_MAX_SIZE);
        assert_eq!(m.cleanup_interval(), DEFAULT_CLEANUP_INTERVAL);
    }

    #[test]
    fn set_get_has_delete() {
        let m = store(10);
        assert_eq!(m.get("a"), None);
        assert!(!m.has("a"));
        m.set("a", s("1"), None).unwrap();
        assert_eq!(m.get("a"), Some(s("1")));
        assert!(m.has("a"));
        m.set("a", Value::Int(2), None).unwrap();
        assert_eq!(m.get("a"), Some(Value::Int(2)));
        assert!(m.delete("a"));
        assert!(!m.delete("a"));
        assert_eq!(m.get("a"), None);
        assert!(m.is_empty());
    }

    #[test]
    fn tables_are_stored_whole() {
        let m = store(10);
        let v = Value::record([("n", Value::Int(1)), ("s", s("x"))]);
        m.set("t", v.clone(), None).unwrap();
        assert_eq!(m.get("t"), Some(v));
    }

    #[test]
    fn ttl_hides_then_sweep_removes() {
        let m = store(10);
        m.set("short", s("x"), Some(Duration::from_millis(30)))
            .unwrap();
        m.set("zero", s("y"), Some(Duration::ZERO)).unwrap();
        m.set("long", s("z"), Some(Duration::from_secs(3600)))
            .unwrap();
        assert!(m.has("short"));
        sleep(Duration::from_millis(60));
        assert_eq!(m.get("short"), None);
        assert_eq!(m.entry("short"), None);
        assert!(!m.has("short"));
        assert!(m.get("zero").is_some(), "ttl 0 never expires");
        assert!(m.get("long").is_some());
        assert_eq!(m.len(), 2);
        assert_eq!(m.raw_len(), 3, "expired key stays until the sweep");
        m.sweep();
        assert_eq!(m.raw_len(), 2);
        assert!(!m.delete("short"));
    }

    #[test]
    fn deleting_an_expired_key_reports_absent() {
        let m = store(10);
        m.set("k", s("x"), Some(Duration::from_millis(10))).unwrap();
        sleep(Duration::from_millis(30));
        assert!(!m.delete("k"));
        assert_eq!(m.raw_len(), 0);
    }

    #[test]
    fn full_store_rejects_new_keys_but_allows_overwrites() {
        let m = store(2);
        m.set("a", s("1"), None).unwrap();
        m.set("b", s("2"), None).unwrap();
        assert_eq!(m.set("c", s("3"), None), Err(StoreError::Full(2)));
        assert_eq!(m.get("c"), None);
        m.set("a", s("10"), None).unwrap();
        assert_eq!(m.get("a"), Some(s("10")));
        assert!(m.delete("b"));
        m.set("c", s("3"), None).unwrap();
    }

    #[test]
    fn expired_keys_make_room() {
        let m = store(1);
        m.set("a", s("1"), Some(Duration::from_millis(10))).unwrap();
        sleep(Duration::from_millis(30));
        m.set("b", s("2"), None).unwrap();
        assert_eq!(m.get("b"), Some(s("2")));
        assert_eq!(m.raw_len(), 1);
    }

    #[test]
    fn versions_increase_and_are_never_reused() {
        let m = store(10);
        let v1 = m.put("k", s("a"), PutOptions::default()).unwrap();
        assert_eq!(m.entry("k"), Some((s("a"), v1)));
        let v2 = m.put("k", s("b"), PutOptions::default()).unwrap();
        assert!(v2 > v1);
        m.delete("k");
        let v3 = m.put("k", s("c"), PutOptions::default()).unwrap();
        assert!(v3 > v2);
        m.set("other", s("x"), None).unwrap();
        assert!(m.entry("other").unwrap().1 > v3);
    }

    #[test]
    fn only_if_absent() {
        let m = store(10);
        let opts = PutOptions {
            only_if_absent: true,
            ..Default::default()
        };
        m.put("k", s("a"), opts.clone()).unwrap();
        assert_eq!(
            m.put("k", s("b"), opts.clone()),
            Err(StoreError::AlreadyExists)
        );
        assert_eq!(m.get("k"), Some(s("a")));
        m.put(
            "t",
            s("a"),
            PutOptions {
                ttl: Some(Duration::from_millis(10)),
                ..Default::default()
            },
        )
        .unwrap();
        sleep(Duration::from_millis(30));
        m.put("t", s("b"), opts).unwrap();
    }

    #[test]
    fn if_version_compare_and_set() {
        let m = store(10);
        let v1 = m.put("k", s("a"), PutOptions::default()).unwrap();
        let cas = |v| PutOptions {
            if_version: Some(v),
            ..Default::default()
        };
        let v2 = m.put("k", s("b"), cas(v1)).unwrap();
        let err = m.put("k", s("c"), cas(v1)).unwrap_err();
        assert_eq!(err, StoreError::Conflict);
        assert!(err.retryable());
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(m.entry("k"), Some((s("b"), v2)));
        assert_eq!(m.put("absent", s("x"), cas(v2)), Err(StoreError::Conflict));
    }

    #[test]
    fn both_conditions_are_invalid() {
        let m = store(10);
        let err = m
            .put(
                "k",
                s("a"),
                PutOptions {
                    only_if_absent: true,
                    if_version: Some(1),
                    ttl: None,
                },
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(!m.has("k"));
    }

    #[test]
    fn put_with_ttl_expires() {
        let m = store(10);
        m.put(
            "k",
            s("a"),
            PutOptions {
                ttl: Some(Duration::from_millis(10)),
                ..Default::default()
            },
        )
        .unwrap();
        sleep(Duration::from_millis(30));
        assert_eq!(m.get("k"), None);
    }

    #[test]
    fn list_pages_in_key_order() {
        let m = store(100);
        for k in ["user:3", "user:1", "other", "user:2", "user:4", "usex"] {
            m.set(k, s(k), None).unwrap();
        }
        let (items, cursor, more) = m.list(Some("user:"), None, 2);
        let keys: Vec<_> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["user:1", "user:2"]);
        assert_eq!(cursor.as_deref(), Some("user:2"));
        assert!(more);
        let (items, cursor, more) = m.list(Some("user:"), cursor.as_deref(), 2);
        let keys: Vec<_> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["user:3", "user:4"]);
        assert!(!more, "nothing after user:4");
        let (items, cursor, more) = m.list(Some("user:"), cursor.as_deref(), 2);
        assert!(items.is_empty());
        assert_eq!(cursor, None);
        assert!(!more);
        assert_eq!(items.len(), 0);
    }

    #[test]
    fn list_without_prefix_or_limit() {
        let m = store(100);
        for k in ["b", "a", "c"] {
            m.set(k, s(k), None).unwrap();
        }
        let (items, _, more) = m.list(None, None, 0);
        let keys: Vec<_> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(!more);
        let (items, _, _) = m.list(None, Some("a"), 0);
        assert_eq!(items.len(), 2);
        // A cursor before the prefix starts at the prefix.
        let (items, _, _) = m.list(Some("b"), Some("a"), 0);
        assert_eq!(items.len(), 1);
        // A cursor after every prefixed key yields nothing.
        let (items, _, _) = m.list(Some("b"), Some("bz"), 0);
        assert!(items.is_empty());
    }

    #[test]
    fn list_skips_expired_and_reports_versions() {
        let m = store(100);
        m.set("a", s("1"), Some(Duration::from_millis(10))).unwrap();
        m.set("b", s("2"), None).unwrap();
        sleep(Duration::from_millis(30));
        let (items, _, more) = m.list_entries(None, None, 1);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].0, "b");
        assert_eq!(items[0].2, m.entry("b").unwrap().1);
        assert!(!more, "the expired key does not count as more");
    }

    #[test]
    fn concurrent_writers() {
        let m = Arc::new(store(100_000));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        m.set(&format!("{t}:{i}"), Value::Int(i), None).unwrap();
                        assert!(m.get(&format!("{t}:{i}")).is_some());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(m.len(), 2000);
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MemoryStore>();
    }
}
