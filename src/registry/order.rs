//! Dependency graph algorithms over registry entries: start order, cycle detection, dependents.
//!
//! The graph is given as `nodes[i]` with edges `deps[i]` (indices of the entries node `i` needs
//! first), so these functions know nothing of YAML or entry data.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use super::kinds::EntryKind;

/// Rank of a kind in the boot sequence when no edge decides (§1.6: resources → hosts →
/// services → HTTP). Code entries and HTTP routing entries have no lifecycle; they are ranked
/// next to what uses them so a runtime can walk one list.
pub fn class_rank(kind: &EntryKind) -> u8 {
    match kind {
        EntryKind::Sqlite(_)
        | EntryKind::MemoryStore(_)
        | EntryKind::TokenStore(_)
        | EntryKind::Policy(_)
        | EntryKind::Directory(_) => 0,
        EntryKind::LuaProcess(_) | EntryKind::LuaFunction(_) => 1,
        EntryKind::ProcessHost(_) => 2,
        EntryKind::Service(_) => 3,
        EntryKind::HttpService(_) => 4,
        EntryKind::Router(_) | EntryKind::Static(_) => 5,
        EntryKind::Endpoint(_) => 6,
    }
}

/// Topological order, dependencies first; among ready nodes the smallest `key` goes first so
/// the result is deterministic. Nodes on a cycle are appended at the end in key order.
pub fn topo_order<K: Ord + Clone>(keys: &[K], deps: &[Vec<usize>]) -> Vec<usize> {
    let n = keys.len();
    let mut pending = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        let unique: BTreeSet<usize> = ds.iter().copied().collect();
        pending[i] = unique.len();
        for d in unique {
            dependents[d].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<(K, usize)>> = (0..n)
        .filter(|&i| pending[i] == 0)
        .map(|i| Reverse((keys[i].clone(), i)))
        .collect();
    let mut out = Vec::with_capacity(n);
    while let Some(Reverse((_, i))) = ready.pop() {
        out.push(i);
        for &j in &dependents[i] {
            pending[j] -= 1;
            if pending[j] == 0 {
                ready.push(Reverse((keys[j].clone(), j)));
            }
        }
    }
    if out.len() < n {
        let mut rest: Vec<usize> = (0..n).filter(|&i| pending[i] > 0).collect();
        rest.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        out.extend(rest);
    }
    out
}

/// Every elementary cycle witness, one per strongly connected component that has a cycle:
/// the path starts and ends at the component's smallest key (`[a, b, a]`).
pub fn find_cycles<K: Ord>(keys: &[K], deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let components = strongly_connected(deps);
    let mut cycles = Vec::new();
    for comp in components {
        let is_cycle = comp.len() > 1 || deps[comp[0]].contains(&comp[0]);
        if !is_cycle {
            continue;
        }
        let members: BTreeSet<usize> = comp.iter().copied().collect();
        let start = *comp
            .iter()
            .min_by(|&&a, &&b| keys[a].cmp(&keys[b]))
            .expect("component is non-empty");
        if let Some(path) = path_back_to(start, &members, keys, deps) {
            cycles.push(path);
        }
    }
    cycles.sort_by(|a, b| keys[a[0]].cmp(&keys[b[0]]));
    cycles
}

/// A shortest path `start → … → start` inside one component (breadth-first, smallest keys
/// explored first, so the reported cycle is stable).
fn path_back_to<K: Ord>(
    start: usize,
    members: &BTreeSet<usize>,
    keys: &[K],
    deps: &[Vec<usize>],
) -> Option<Vec<usize>> {
    let sorted = |i: usize| {
        let mut next: Vec<usize> = deps[i]
            .iter()
            .copied()
            .filter(|d| members.contains(d))
            .collect();
        next.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        next.dedup();
        next
    };
    let mut parent: std::collections::HashMap<usize, usize> = Default::default();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(i) = queue.pop_front() {
        for d in sorted(i) {
            if d == start {
                let mut path = vec![i];
                let mut cur = i;
                while cur != start {
                    cur = parent[&cur];
                    path.push(cur);
                }
                path.reverse();
                path.push(start);
                return Some(path);
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(d) {
                e.insert(i);
                queue.push_back(d);
            }
        }
    }
    None
}

/// Tarjan's algorithm, iterative so deep chains cannot overflow the stack.
fn strongly_connected(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = deps.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut counter = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(&mut (v, ref mut next)) = work.last_mut() {
            if *next == 0 && index[v] == usize::MAX {
                index[v] = counter;
                low[v] = counter;
                counter += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = deps[v].get(*next) {
                *next += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(comp);
            }
        }
    }
    out
}

/// `seeds` plus everything that depends on them, directly or transitively.
pub fn with_dependents(seeds: &[usize], deps: &[Vec<usize>]) -> BTreeSet<usize> {
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); deps.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut seen: BTreeSet<usize> = seeds.iter().copied().collect();
    let mut todo: Vec<usize> = seeds.to_vec();
    while let Some(i) = todo.pop() {
        for &j in &dependents[i] {
            if seen.insert(j) {
                todo.push(j);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_puts_dependencies_first_and_breaks_ties_by_key() {
        // 0 needs 2; 1 needs nothing; 2 needs nothing. Keys order 1 < 2 < 0.
        let keys = [(9, "c"), (1, "a"), (5, "b")];
        let deps = vec![vec![2], vec![], vec![]];
        assert_eq!(topo_order(&keys, &deps), vec![1, 2, 0]);
    }

    #[test]
    fn topo_lets_a_dependency_jump_ahead_of_its_class() {
        // 0 (rank 0) needs 1 (rank 4): 1 must come first despite its rank.
        let keys = [0, 4, 2];
        let deps = vec![vec![1], vec![], vec![]];
        assert_eq!(topo_order(&keys, &deps), vec![2, 1, 0]);
    }

    #[test]
    fn finds_each_cycle_once_from_its_smallest_key() {
        let keys = ["d", "b", "a", "c", "e"];
        // a → b → c → a, d → d, e → a (not on a cycle)
        let deps = vec![vec![0], vec![3], vec![1], vec![2], vec![2]];
        let cycles = find_cycles(&keys, &deps);
        let named: Vec<Vec<&str>> = cycles
            .iter()
            .map(|c| c.iter().map(|&i| keys[i]).collect())
            .collect();
        assert_eq!(named, vec![vec!["a", "b", "c", "a"], vec!["d", "d"]]);
    }

    #[test]
    fn no_cycles_in_a_dag() {
        let keys = [1, 2, 3];
        let deps = vec![vec![1, 2], vec![2], vec![]];
        assert!(find_cycles(&keys, &deps).is_empty());
        assert_eq!(topo_order(&keys, &deps), vec![2, 1, 0]);
    }

    #[test]
    fn dependents_are_transitive() {
        // 2 needs 1, 1 needs 0, 3 independent.
        let deps = vec![vec![], vec![0], vec![1], vec![]];
        let got: Vec<usize> = with_dependents(&[0], &deps).into_iter().collect();
        assert_eq!(got, vec![0, 1, 2]);
    }
}
