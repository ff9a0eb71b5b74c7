//! A map of short-lived entries (seen signatures, failing addresses) whose stale entries are
//! dropped in bulk once the map has doubled since the last sweep: inserts stay O(1) amortized
//! however many entries are live, and memory stays bounded by twice the live set.

use std::collections::HashMap;
use std::hash::Hash;

pub struct ExpiringMap<K, V> {
    map: HashMap<K, V>,
    sweep_at: usize,
    floor: usize,
}

impl<K: Hash + Eq, V> ExpiringMap<K, V> {
    /// No sweep before `floor` entries.
    pub fn new(floor: usize) -> Self {
        ExpiringMap {
            map: HashMap::new(),
            sweep_at: floor.max(1),
            floor: floor.max(1),
        }
    }

    /// Drops every entry `live` rejects, if the map has grown enough since the last sweep.
    pub fn sweep_if_due(&mut self, live: impl FnMut(&K, &mut V) -> bool) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(live);
            self.sweep_at = (self.map.len() * 2).max(self.floor);
        }
    }

    pub fn map(&mut self) -> &mut HashMap<K, V> {
        &mut self.map
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_only_after_doubling() {
        let mut m: ExpiringMap<u32, bool> = ExpiringMap::new(4);
        for k in 0..4 {
            m.map().insert(k, true);
        }
        // All live: the sweep keeps them and waits for 8 before looking again.
        m.sweep_if_due(|_, live| *live);
        assert_eq!(m.len(), 4);
        for k in 4..7 {
            m.map().insert(k, false);
        }
        m.sweep_if_due(|_, live| *live);
        assert_eq!(m.len(), 7, "not due before 8");
        m.map().insert(7, false);
        m.sweep_if_due(|_, live| *live);
        assert_eq!(m.len(), 4, "stale ones dropped");
    }
}
