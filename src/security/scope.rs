//! Scopes: immutable sets of compiled policies keyed by ID, evaluated deny-overrides (§7.3).

use crate::registry::kinds::EntryId;
use crate::security::actor::Actor;
use crate::security::policy::{CompiledPolicy, Decision};
use std::sync::Arc;

/// Policies in insertion order, at most one per ID (re-adding replaces in place). Cloning is
/// cheap: every change builds a new scope and shares the policies.
#[derive(Clone, Default)]
pub struct Scope {
    policies: Arc<Vec<Arc<CompiledPolicy>>>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.policies.iter().map(|p| p.id.to_string()))
            .finish()
    }
}

impl PartialEq for Scope {
    /// Same policy IDs in the same order.
    fn eq(&self, other: &Self) -> bool {
        self.policies.len() == other.policies.len()
            && self
                .policies
                .iter()
                .zip(other.policies.iter())
                .all(|(a, b)| a.id == b.id)
    }
}

impl Scope {
    pub fn new(policies: Vec<Arc<CompiledPolicy>>) -> Self {
        let mut out: Vec<Arc<CompiledPolicy>> = Vec::with_capacity(policies.len());
        for p in policies {
            insert(&mut out, p);
        }
        Scope {
            policies: Arc::new(out),
        }
    }

    /// A new scope with `policy` added (replacing one with the same ID).
    pub fn with(&self, policy: Arc<CompiledPolicy>) -> Scope {
        let mut out = (*self.policies).clone();
        insert(&mut out, policy);
        Scope {
            policies: Arc::new(out),
        }
    }

    /// A new scope without the policy `id` (unchanged if absent).
    pub fn without(&self, id: &EntryId) -> Scope {
        if !self.contains(id) {
            return self.clone();
        }
        Scope {
            policies: Arc::new(
                self.policies
                    .iter()
                    .filter(|p| &p.id != id)
                    .cloned()
                    .collect(),
            ),
        }
    }

    pub fn contains(&self, id: &EntryId) -> bool {
        self.policies.iter().any(|p| &p.id == id)
    }

    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
        &self.policies
    }

    pub fn policy_ids(&self) -> Vec<EntryId> {
        self.policies.iter().map(|p| p.id.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Any deny wins regardless of order; else any allow; else (or when empty) undefined.
    pub fn evaluate(
        &self,
        actor: Option<&Actor>,
        action: &str,
        resource: &str,
        meta: &serde_json::Value,
    ) -> Decision {
        let mut result = Decision::Undefined;
        for p in self.policies.iter() {
            match p.evaluate(actor, action, resource, meta) {
                Decision::Deny => return Decision::Deny,
                Decision::Allow => result = Decision::Allow,
                Decision::Undefined => {}
            }
        }
        result
    }
}

fn insert(list: &mut Vec<Arc<CompiledPolicy>>, p: Arc<CompiledPolicy>) {
    match list.iter_mut().find(|q| q.id == p.id) {
        Some(slot) => *slot = p,
        None => list.push(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::policy::tests::{compiled, policy};
    use serde_json::Value as J;

    fn p(name: &str, actions: &[&str], allow: bool) -> Arc<CompiledPolicy> {
        Arc::new(compiled(name, &policy(actions, &["*"], allow)))
    }

    #[test]
    fn empty_scope_is_undefined() {
        let s = Scope::default();
        assert!(s.is_empty());
        assert_eq!(s.evaluate(None, "a", "r", &J::Null), Decision::Undefined);
    }

    #[test]
    fn deny_overrides_in_any_order() {
        let allow = p("allow", &["*"], true);
        let deny = p("deny", &["write"], false);
        for s in [
            Scope::new(vec![allow.clone(), deny.clone()]),
            Scope::new(vec![deny.clone(), allow.clone()]),
        ] {
            assert_eq!(s.evaluate(None, "write", "x", &J::Null), Decision::Deny);
            assert_eq!(s.evaluate(None, "read", "x", &J::Null), Decision::Allow);
        }
        let only_other = Scope::new(vec![p("r", &["read"], true)]);
        assert_eq!(
            only_other.evaluate(None, "write", "x", &J::Null),
            Decision::Undefined
        );
    }

    #[test]
    fn with_without_are_immutable_and_keyed_by_id() {
        let a = p("a", &["*"], true);
        let s0 = Scope::new(vec![a.clone()]);
        let s1 = s0.with(p("b", &["*"], false));
        assert_eq!(s0.len(), 1);
        assert_eq!(s1.len(), 2);
        assert_eq!(s1.evaluate(None, "x", "y", &J::Null), Decision::Deny);
        // Re-adding by ID replaces in place.
        let s2 = s1.with(p("b", &["other"], false));
        assert_eq!(s2.len(), 2);
        assert_eq!(
            s2.policy_ids(),
            vec![EntryId::new("app", "a"), EntryId::new("app", "b")]
        );
        assert_eq!(s2.evaluate(None, "x", "y", &J::Null), Decision::Allow);
        let s3 = s2.without(&EntryId::new("app", "a"));
        assert!(!s3.contains(&EntryId::new("app", "a")));
        assert!(s2.contains(&EntryId::new("app", "a")));
        assert_eq!(s3.without(&EntryId::new("app", "zzz")), s3);
        // Duplicates passed to new() collapse too.
        assert_eq!(Scope::new(vec![a.clone(), a]).len(), 1);
    }
}
