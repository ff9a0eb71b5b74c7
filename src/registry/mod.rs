//! The registry: loads `_index.yaml` files into typed entries (or every diagnostic) and answers
//! questions about them (lookup, dependency edges, start order, watched files, diffs).
//!
//! Pure: reads files, never starts anything. `moonwire check`, `run` and hot reload all call
//! [`load`].

pub mod diag;
pub mod duration;
pub mod kinds;
mod load;
pub mod order;
mod raw;
pub mod size;

use std::collections::HashMap;
use std::path::PathBuf;

pub use diag::Diagnostic;
pub use kinds::{Entry, EntryId, EntryKind};
pub use load::{cpu_count, load, load_with_env, DEMO_TOKEN_KEY, KNOWN_KINDS};

/// A validated set of entries.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<Entry>,
    index: HashMap<EntryId, usize>,
    /// `deps[i]`: indices of the entries `entries[i]` needs first.
    deps: Vec<Vec<usize>>,
    files: Vec<PathBuf>,
    warnings: Vec<Diagnostic>,
}

/// What changed between two loads of the registry (IDs sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryDiff {
    pub added: Vec<EntryId>,
    pub removed: Vec<EntryId>,
    /// Entries present in both whose data differs, plus every entry of the newer registry that
    /// (transitively) depends on one of them.
    pub changed: Vec<EntryId>,
    /// Entries whose only change is a worker-pool size: resized in place, so neither they nor
    /// their dependents are restarted.
    pub resized: Vec<EntryId>,
}

impl RegistryDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.resized.is_empty()
    }
}

impl Registry {
    pub(crate) fn from_parts(
        entries: Vec<Entry>,
        deps: Vec<Vec<usize>>,
        files: Vec<PathBuf>,
        warnings: Vec<Diagnostic>,
    ) -> Registry {
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        Registry {
            entries,
            index,
            deps,
            files,
            warnings,
        }
    }

    /// Entries in declaration order (files sorted by path).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, id: &EntryId) -> Option<&Entry> {
        self.index.get(id).map(|&i| &self.entries[i])
    }

    /// Non-fatal findings (unset `token_key_env`, unknown fields), for the caller to log.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Every entry, dependencies before their dependents; where no edge decides, the class
    /// order of §1.6 (resources → hosts → services → HTTP), then the ID.
    pub fn start_order(&self) -> Vec<EntryId> {
        let keys: Vec<(u8, &EntryId)> = self
            .entries
            .iter()
            .map(|e| (order::class_rank(&e.kind), &e.id))
            .collect();
        order::topo_order(&keys, &self.deps)
            .into_iter()
            .map(|i| self.entries[i].id.clone())
            .collect()
    }

    /// Direct edges: `lifecycle.requires`/`depends_on` plus every reference field (including
    /// the policies of referenced security groups and `token_auth.store`).
    pub fn dependencies(&self, id: &EntryId) -> Vec<EntryId> {
        match self.index.get(id) {
            Some(&i) => self.deps[i]
                .iter()
                .map(|&d| self.entries[d].id.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Entries that reference `id` directly.
    pub fn dependents(&self, id: &EntryId) -> Vec<EntryId> {
        let Some(&target) = self.index.get(id) else {
            return Vec::new();
        };
        self.deps
            .iter()
            .enumerate()
            .filter(|(_, ds)| ds.contains(&target))
            .map(|(i, _)| self.entries[i].id.clone())
            .collect()
    }

    /// Every YAML file scanned and every `file://` target, canonical and sorted.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = self.files.clone();
        for entry in &self.entries {
            files.extend(entry.source_files.iter().cloned());
        }
        files.sort();
        files.dedup();
        files
    }

    /// Entries whose data was read from `path` via `file://` (`path` canonical, as in
    /// [`Registry::watched_files`]).
    pub fn entries_reading(&self, path: &std::path::Path) -> Vec<EntryId> {
        self.entries
            .iter()
            .filter(|e| e.source_files.iter().any(|f| f == path))
            .map(|e| e.id.clone())
            .collect()
    }

    /// Entries to add, remove and restart to go from `self` to `newer`.
    pub fn diff(&self, newer: &Registry) -> RegistryDiff {
        let mut added: Vec<EntryId> = Vec::new();
        let mut seeds = Vec::new();
        let mut resized = Vec::new();
        for (i, entry) in newer.entries.iter().enumerate() {
            match self.get(&entry.id) {
                None => added.push(entry.id.clone()),
                Some(old) if same_data(old, entry) => {}
                Some(old)
                    if old.meta == entry.meta && old.kind.same_but_pool_sizes(&entry.kind) =>
                {
                    resized.push(entry.id.clone())
                }
                Some(_) => seeds.push(i),
            }
        }
        let mut removed: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|e| newer.get(&e.id).is_none())
            .map(|e| e.id.clone())
            .collect();
        let mut changed: Vec<EntryId> = order::with_dependents(&seeds, &newer.deps)
            .into_iter()
            .map(|i| newer.entries[i].id.clone())
            .filter(|id| self.get(id).is_some())
            .collect();
        added.sort();
        removed.sort();
        changed.sort();
        resized.sort();
        RegistryDiff {
            added,
            removed,
            changed,
            resized,
        }
    }
}

/// Where an entry is declared does not matter for a restart; what it says does.
fn same_data(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind && a.meta == b.meta
}
