//! The process table: live processes by id, the name registry, monitors and links, and the exit
//! protocol that notifies them. Every exit path (return, error, terminate, panic) ends in `exit`.

use crate::process::mailbox::Mailbox;
use crate::process::pid::{Event, ExitResult, Message, Pid, Signal};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

/// Hashes the never-reused sequential ids: SipHash is needless work on the send path, and a
/// multiplicative hash spreads sequential ids perfectly (and aligned addresses well enough).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, id: usize) {
        self.write_u64(id as u64);
    }
}

type Shard = Mutex<HashMap<u64, Arc<ProcessEntry>, BuildHasherDefault<IdHasher>>>;

pub struct ProcessEntry {
    pub pid: Pid,
    /// Inline rather than its own `Arc`: one allocation less per process.
    pub mailbox: Mailbox,
    /// The registry entry that runs in this process (`app:ticker`), or a kind label; changes
    /// when the process upgrades to another entry.
    entry: Mutex<Arc<str>>,
    /// Mirrors the process's `upgradable` option, so hot reload can choose OUTDATED over a
    /// restart without asking the process.
    pub upgradable: std::sync::atomic::AtomicBool,
    /// Allocated on the first monitor, link or name: most processes never have one.
    relations: Mutex<Option<Box<Relations>>>,
}

/// The relations of a process, created on first write.
struct RelationsGuard<'a>(MutexGuard<'a, Option<Box<Relations>>>);

impl std::ops::Deref for RelationsGuard<'_> {
    type Target = Relations;
    fn deref(&self) -> &Relations {
        self.0.as_deref().unwrap_or(&EMPTY_RELATIONS)
    }
}

impl std::ops::DerefMut for RelationsGuard<'_> {
    fn deref_mut(&mut self) -> &mut Relations {
        self.0.get_or_insert_with(Box::default)
    }
}

static EMPTY_RELATIONS: Relations = Relations {
    monitors: Vec::new(),
    links: Vec::new(),
    names: Vec::new(),
};

impl ProcessEntry {
    fn relations(&self) -> RelationsGuard<'_> {
        RelationsGuard(self.relations.lock().expect("relations lock"))
    }

    pub fn entry(&self) -> Arc<str> {
        self.entry.lock().expect("entry lock").clone()
    }

    pub fn set_entry(&self, entry: Arc<str>) {
        *self.entry.lock().expect("entry lock") = entry;
    }
}

#[derive(Default)]
struct Relations {
    /// Who monitors this process (gets EXIT).
    monitors: Vec<Pid>,
    links: Vec<Pid>,
    names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("process not found")]
    NotFound,
    #[error("name already registered")]
    AlreadyExists,
}

/// Counters the metrics endpoint reads.
#[derive(Default)]
pub struct ProcessStats {
    pub spawned: AtomicU64,
    pub exited: AtomicU64,
    pub alive: AtomicUsize,
}

pub struct ProcessTable {
    shards: Vec<Shard>,
    names: Mutex<HashMap<String, Pid>>,
    next_id: AtomicU64,
    pub stats: ProcessStats,
}

impl Default for ProcessTable {
    fn default() -> Self {
        ProcessTable {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            names: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stats: ProcessStats::default(),
        }
    }
}

impl ProcessTable {
    fn shard(&self, id: u64) -> &Shard {
        &self.shards[(id as usize) % SHARDS]
    }

    /// Allocates a pid and a mailbox; the process is live (addressable) from here on.
    /// `host` is an interned label (`pid::intern_label`, or a literal).
    pub fn register(&self, host: &'static str, entry: Arc<str>) -> Arc<ProcessEntry> {
        self.register_with(host, entry, Mailbox::default())
    }

    pub fn register_with(
        &self,
        host: &'static str,
        entry: Arc<str>,
        mailbox: Mailbox,
    ) -> Arc<ProcessEntry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let proc = Arc::new(ProcessEntry {
            pid: Pid::new(id, host),
            mailbox,
            entry: Mutex::new(entry),
            upgradable: std::sync::atomic::AtomicBool::new(false),
            relations: Mutex::new(None),
        });
        self.shard(id)
            .lock()
            .expect("process table lock")
            .insert(id, proc.clone());
        self.stats.spawned.fetch_add(1, Ordering::Relaxed);
        self.stats.alive.fetch_add(1, Ordering::Relaxed);
        proc
    }

    pub fn get(&self, id: u64) -> Option<Arc<ProcessEntry>> {
        self.shard(id)
            .lock()
            .expect("process table lock")
            .get(&id)
            .cloned()
    }

    pub fn alive(&self) -> usize {
        self.stats.alive.load(Ordering::Relaxed)
    }

    /// What `dest` (the bytes of a Lua string) names: a PID string's id, or a registered
    /// name's pid. `None` for neither.
    fn destination(&self, dest: &[u8]) -> Option<(u64, Option<Pid>)> {
        if dest.first() == Some(&b'{') {
            Some((Pid::parse_id_bytes(dest)?, None))
        } else {
            let pid = self.lookup(std::str::from_utf8(dest).ok()?)?;
            Some((pid.id(), Some(pid)))
        }
    }

    /// Resolves a destination: a PID string or a registered name.
    pub fn resolve(&self, dest: &str) -> Option<Pid> {
        self.resolve_entry(dest).map(|(pid, _)| pid)
    }

    /// `resolve` plus the live entry, in one table lookup (the send path). `None` when `dest`
    /// is neither PID-shaped nor a registered name; `Some((pid, None))` for a dead pid.
    pub fn resolve_entry(
        &self,
        dest: impl AsRef<[u8]>,
    ) -> Option<(Pid, Option<Arc<ProcessEntry>>)> {
        let dest = dest.as_ref();
        let (id, named) = self.destination(dest)?;
        Some(match self.get(id) {
            Some(p) => (p.pid.clone(), Some(p)),
            // A well-formed dead pid is still a pid: sends to it are dropped.
            None => match named {
                Some(pid) => (pid, None),
                None => (
                    Pid::parsed(id, host_of(std::str::from_utf8(dest).ok()?)),
                    None,
                ),
            },
        })
    }

    /// `resolve_entry` without building the pid: `None` if `dest` names nothing, `Some(None)`
    /// for a well-formed pid of a process that is gone.
    pub fn entry_of(&self, dest: &str) -> Option<Option<Arc<ProcessEntry>>> {
        let (id, _) = self.destination(dest.as_bytes())?;
        Some(self.get(id))
    }

    /// Queues a message; `false` if the target is gone (the message is dropped).
    pub fn send(&self, to: &Pid, msg: Message) -> bool {
        match self.get(to.id()) {
            Some(p) => p.mailbox.push(Signal::Message(msg)),
            None => false,
        }
    }

    pub fn send_event(&self, to: &Pid, event: Event) -> bool {
        match self.get(to.id()) {
            Some(p) => p.mailbox.push(Signal::Event(event)),
            None => false,
        }
    }

    /// `watcher` gets EXIT when `target` ends; a dead target answers at once.
    pub fn monitor(&self, watcher: &Pid, target: &Pid) {
        match self.get(target.id()) {
            Some(p) => {
                let mut rel = p.relations();
                if !rel.monitors.contains(watcher) {
                    rel.monitors.push(watcher.clone());
                }
            }
            None => {
                self.send_event(
                    watcher,
                    Event::Exit {
                        from: target.clone(),
                        result: ExitResult::Error("process not found".into()),
                    },
                );
            }
        }
    }

    pub fn demonitor(&self, watcher: &Pid, target: &Pid) {
        if let Some(p) = self.get(target.id()) {
            p.relations().monitors.retain(|w| w != watcher);
        }
    }

    /// Links both ways. Linking to a dead process behaves as if it had just failed.
    pub fn link(&self, a: &Pid, b: &Pid) {
        if a == b {
            return;
        }
        let (Some(pa), Some(pb)) = (self.get(a.id()), self.get(b.id())) else {
            self.send_event(
                a,
                Event::LinkDown {
                    from: b.clone(),
                    error: "process not found".into(),
                },
            );
            return;
        };
        for (p, other) in [(&pa, b), (&pb, a)] {
            let mut rel = p.relations();
            if !rel.links.contains(other) {
                rel.links.push(other.clone());
            }
        }
    }

    pub fn unlink(&self, a: &Pid, b: &Pid) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(p) = self.get(x.id()) {
                p.relations().links.retain(|l| l != y);
            }
        }
    }

    /// Registers `name` for `pid`; idempotent for the same pid.
    pub fn register_name(&self, name: &str, pid: &Pid) -> Result<(), TableError> {
        let proc = self.get(pid.id()).ok_or(TableError::NotFound)?;
        let mut names = self.names.lock().expect("names lock");
        if let Some(holder) = names.get(name) {
            if holder == pid {
                return Ok(());
            }
            if self.get(holder.id()).is_some() {
                return Err(TableError::AlreadyExists);
            }
        }
        names.insert(name.to_string(), pid.clone());
        proc.relations().names.push(name.to_string());
        Ok(())
    }

    pub fn lookup(&self, name: &str) -> Option<Pid> {
        self.names.lock().expect("names lock").get(name).cloned()
    }

    pub fn unregister_name(&self, name: &str) -> bool {
        let removed = self.names.lock().expect("names lock").remove(name);
        if let Some(pid) = &removed {
            if let Some(p) = self.get(pid.id()) {
                p.relations().names.retain(|n| n != name);
            }
        }
        removed.is_some()
    }

    /// Ends a process: removes it, releases its names, closes its mailbox, and notifies
    /// monitors (EXIT) and, on an abnormal exit, linked processes (LINK_DOWN). Idempotent.
    pub fn exit(&self, pid: &Pid, result: ExitResult) {
        let Some(proc) = self
            .shard(pid.id())
            .lock()
            .expect("process table lock")
            .remove(&pid.id())
        else {
            return;
        };
        self.stats.alive.fetch_sub(1, Ordering::Relaxed);
        self.stats.exited.fetch_add(1, Ordering::Relaxed);
        proc.mailbox.close();
        let rel = proc
            .relations
            .lock()
            .expect("relations lock")
            .take()
            .unwrap_or_default();
        if !rel.names.is_empty() {
            let mut names = self.names.lock().expect("names lock");
            for n in &rel.names {
                if names.get(n) == Some(pid) {
                    names.remove(n);
                }
            }
        }
        for watcher in &rel.monitors {
            self.send_event(
                watcher,
                Event::Exit {
                    from: pid.clone(),
                    result: result.clone(),
                },
            );
        }
        for linked in &rel.links {
            if let Some(p) = self.get(linked.id()) {
                p.relations().links.retain(|l| l != pid);
                if let ExitResult::Error(error) = &result {
                    p.mailbox.push(Signal::Event(Event::LinkDown {
                        from: pid.clone(),
                        error: error.clone(),
                    }));
                }
            }
        }
    }

    /// Every live pid (for shutdown).
    pub fn all(&self) -> Vec<Arc<ProcessEntry>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .expect("process table lock")
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn host_of(pid: &str) -> &str {
    pid.trim_start_matches('{')
        .split('|')
        .next()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with_two() -> (ProcessTable, Arc<ProcessEntry>, Arc<ProcessEntry>) {
        let t = ProcessTable::default();
        let a = t.register("h", Arc::from("t:a"));
        let b = t.register("h", Arc::from("t:b"));
        (t, a, b)
    }

    fn events(p: &ProcessEntry) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(Signal::Event(e)) = p.mailbox.pop() {
            v.push(e);
        }
        v
    }

    #[test]
    fn monitor_gets_exit_with_result() {
        let (t, a, b) = table_with_two();
        t.monitor(&a.pid, &b.pid);
        t.exit(
            &b.pid,
            ExitResult::Value(crate::process::value::Value::Int(1)),
        );
        let ev = events(&a);
        assert!(
            matches!(&ev[..], [Event::Exit { from, result: ExitResult::Value(_) }] if *from == b.pid)
        );
    }

    #[test]
    fn monitor_of_dead_pid_answers_at_once() {
        let (t, a, b) = table_with_two();
        t.exit(&b.pid, ExitResult::Error("x".into()));
        t.monitor(&a.pid, &b.pid);
        assert!(
            matches!(&events(&a)[..], [Event::Exit { result: ExitResult::Error(e), .. }] if e == "process not found")
        );
    }

    #[test]
    fn links_fire_only_on_abnormal_exit() {
        let (t, a, b) = table_with_two();
        t.link(&a.pid, &b.pid);
        t.exit(&b.pid, ExitResult::Value(crate::process::value::Value::Nil));
        assert!(events(&a).is_empty());
        let c = t.register("h", Arc::from("t:c"));
        t.link(&a.pid, &c.pid);
        t.exit(&c.pid, ExitResult::Error("boom".into()));
        assert!(matches!(&events(&a)[..], [Event::LinkDown { error, .. }] if error == "boom"));
    }

    #[test]
    fn names_are_released_on_exit() {
        let (t, a, b) = table_with_two();
        t.register_name("svc", &a.pid).unwrap();
        t.register_name("svc", &a.pid).unwrap();
        assert_eq!(
            t.register_name("svc", &b.pid),
            Err(TableError::AlreadyExists)
        );
        t.exit(&a.pid, ExitResult::Value(crate::process::value::Value::Nil));
        assert_eq!(t.lookup("svc"), None);
        t.register_name("svc", &b.pid).unwrap();
        assert_eq!(t.resolve("svc"), Some(b.pid.clone()));
    }

    #[test]
    fn dead_pid_still_resolves_for_dropped_sends() {
        let (t, a, _) = table_with_two();
        let s = a.pid.to_string();
        t.exit(&a.pid, ExitResult::Value(crate::process::value::Value::Nil));
        let pid = t.resolve(&s).unwrap();
        assert!(!t.send(
            &pid,
            Message {
                from: None,
                topic: Arc::from("x"),
                payloads: vec![]
            }
        ));
    }
}
