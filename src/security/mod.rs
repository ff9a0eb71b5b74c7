//! The security model (§7): actors, compiled policies and groups, scopes, the per-frame
//! security context and the token store. Pure logic; the Lua bindings live in
//! `lua::modules::security`.

pub mod accounts;
pub mod actor;
pub mod digest;
pub mod expiring;
pub mod internal_token;
pub mod password;
pub mod policy;
pub mod request_signing;
pub mod scope;
pub mod token;

pub use actor::Actor;
pub use policy::{CompiledPolicy, Decision};
pub use scope::Scope;

use crate::registry::kinds::{self, EntryId, SecurityContextSpec};
use std::collections::HashMap;
use std::sync::Arc;

/// Wall-clock Unix seconds: token expiries, signature timestamps, account records.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Every compiled policy of the current registry, and the groups they declare.
#[derive(Default, Debug)]
pub struct PolicySet {
    policies: HashMap<EntryId, Arc<CompiledPolicy>>,
    /// Group ID → member policy IDs, sorted.
    groups: HashMap<EntryId, Vec<EntryId>>,
}

impl PolicySet {
    /// Compiles every policy. A policy that fails to compile is left out and reported as
    /// `"<id>: <reason>"`; the rest still load.
    pub fn build<'a>(
        policies: impl IntoIterator<Item = (&'a EntryId, &'a kinds::Policy)>,
    ) -> (Self, Vec<String>) {
        let mut set = PolicySet::default();
        let mut errors = Vec::new();
        for (id, p) in policies {
            match CompiledPolicy::compile(id.clone(), p) {
                Ok(c) => {
                    for g in &p.groups {
                        set.groups.entry(g.clone()).or_default().push(id.clone());
                    }
                    set.policies.insert(id.clone(), Arc::new(c));
                }
                Err(e) => errors.push(format!("{id}: {e}")),
            }
        }
        for members in set.groups.values_mut() {
            members.sort();
            members.dedup();
        }
        (set, errors)
    }

    pub fn get(&self, id: &EntryId) -> Option<Arc<CompiledPolicy>> {
        self.policies.get(id).cloned()
    }

    /// The scope of a group's policies; `None` for an unknown or empty group.
    pub fn group_scope(&self, group: &EntryId) -> Option<Scope> {
        let scope = self.scope_from_ids(self.groups.get(group)?);
        (!scope.is_empty()).then_some(scope)
    }

    /// The scope of the listed policies; unknown IDs are dropped.
    pub fn scope_from_ids(&self, ids: &[EntryId]) -> Scope {
        Scope::new(ids.iter().filter_map(|id| self.get(id)).collect())
    }

    /// A `lifecycle.security` block as a context: scope = `groups` ∪ `policies` with unknown
    /// IDs skipped (§7.1). The scope is present only when the block names any policy or group,
    /// so a bare actor runs like "no scope" (permissive unless strict).
    pub fn context_from_spec(&self, spec: &SecurityContextSpec) -> SecurityContext {
        let actor = spec
            .actor_id
            .as_ref()
            .map(|id| Actor::new(id.clone(), spec.actor_meta.clone()));
        let scope = if spec.policies.is_empty() && spec.groups.is_empty() {
            None
        } else {
            let mut ids: Vec<EntryId> = Vec::new();
            for g in &spec.groups {
                ids.extend(self.groups.get(g).into_iter().flatten().cloned());
            }
            ids.extend(spec.policies.iter().cloned());
            Some(self.scope_from_ids(&ids))
        };
        SecurityContext { actor, scope }
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn policy_ids(&self) -> impl Iterator<Item = &EntryId> {
        self.policies.keys()
    }

    pub fn group_ids(&self) -> impl Iterator<Item = &EntryId> {
        self.groups.keys()
    }
}

/// Who is acting and under which policies, for one frame (§7.1).
#[derive(Clone, Default, Debug)]
pub struct SecurityContext {
    pub actor: Option<Actor>,
    pub scope: Option<Scope>,
}

impl SecurityContext {
    pub fn new(actor: Option<Actor>, scope: Option<Scope>) -> Self {
        SecurityContext { actor, scope }
    }

    /// The runtime permission check (§7.3): with actor and scope, the scope must allow;
    /// otherwise permissive mode allows and strict mode denies.
    pub fn allowed(
        &self,
        action: &str,
        resource: &str,
        meta: &serde_json::Value,
        strict: bool,
    ) -> bool {
        match (&self.actor, &self.scope) {
            (Some(actor), Some(scope)) => {
                scope.evaluate(Some(actor), action, resource, meta) == Decision::Allow
            }
            _ => !strict,
        }
    }

    /// `security.can`: like `allowed`, but a missing actor or scope is always `false`.
    pub fn can(&self, action: &str, resource: &str, meta: &serde_json::Value) -> bool {
        match (&self.actor, &self.scope) {
            (Some(actor), Some(scope)) => {
                scope.evaluate(Some(actor), action, resource, meta) == Decision::Allow
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::policy::tests::policy;
    use serde_json::{json, Value as J};

    fn ids(list: &[&str]) -> Vec<EntryId> {
        list.iter()
            .map(|s| EntryId::resolve(s, "app").unwrap())
            .collect()
    }

    fn set() -> PolicySet {
        let mut user = policy(&["*"], &["*"], true);
        user.groups = ids(&["app:user"]);
        let mut no_write = policy(&["write"], &["*"], false);
        no_write.groups = ids(&["app:user", "app:readonly"]);
        let mut bad = policy(&["*"], &["*"], true);
        bad.conditions.push(kinds::Condition {
            field: "x".into(),
            operator: kinds::ConditionOp::Matches,
            value: kinds::ConditionValue::Literal(json!("(")),
        });
        bad.groups = ids(&["app:broken"]);
        let entries = [
            (EntryId::new("app", "user_policy"), user),
            (EntryId::new("app", "no_write"), no_write),
            (EntryId::new("app", "bad"), bad),
        ];
        let (set, errors) = PolicySet::build(entries.iter().map(|(i, p)| (i, p)));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("app:bad: "), "{errors:?}");
        set
    }

    #[test]
    fn build_get_and_groups() {
        let s = set();
        assert_eq!(s.len(), 2);
        assert!(s.get(&EntryId::new("app", "user_policy")).is_some());
        assert!(s.get(&EntryId::new("app", "bad")).is_none());
        let user = s.group_scope(&EntryId::new("app", "user")).unwrap();
        assert_eq!(user.policy_ids(), ids(&["app:no_write", "app:user_policy"]));
        let a = Actor::with_id("user:1");
        assert_eq!(
            user.evaluate(Some(&a), "read", "x", &J::Null),
            Decision::Allow
        );
        assert_eq!(
            user.evaluate(Some(&a), "write", "x", &J::Null),
            Decision::Deny
        );
        assert!(s.group_scope(&EntryId::new("app", "readonly")).is_some());
        assert!(s.group_scope(&EntryId::new("app", "nope")).is_none());
        assert!(
            s.group_scope(&EntryId::new("app", "broken")).is_none(),
            "a group whose only member failed to compile is empty"
        );
    }

    #[test]
    fn scope_from_ids_drops_unknown() {
        let s = set();
        let scope = s.scope_from_ids(&ids(&["app:user_policy", "app:gone", "other:x"]));
        assert_eq!(scope.policy_ids(), ids(&["app:user_policy"]));
        assert!(s.scope_from_ids(&[]).is_empty());
    }

    #[test]
    fn context_from_spec() {
        let s = set();
        let spec = SecurityContextSpec {
            actor_id: Some("svc:1".into()),
            actor_meta: json!({"k": 1}).as_object().unwrap().clone(),
            policies: ids(&["app:user_policy", "app:unknown"]),
            groups: ids(&["app:readonly"]),
        };
        let ctx = s.context_from_spec(&spec);
        assert_eq!(ctx.actor.as_ref().unwrap().id, "svc:1");
        assert_eq!(ctx.scope.as_ref().unwrap().len(), 2);
        assert!(!ctx.allowed("write", "x", &J::Null, false));
        assert!(ctx.allowed("read", "x", &J::Null, true));
        let bare = s.context_from_spec(&SecurityContextSpec {
            actor_id: Some("svc:2".into()),
            ..Default::default()
        });
        assert!(bare.scope.is_none());
        assert!(s
            .context_from_spec(&SecurityContextSpec::default())
            .actor
            .is_none());
    }

    #[test]
    fn allowed_strict_vs_permissive() {
        let s = set();
        let meta = J::Null;
        let none = SecurityContext::default();
        assert!(none.allowed("x", "y", &meta, false));
        assert!(!none.allowed("x", "y", &meta, true));
        let actor_only = SecurityContext::new(Some(Actor::with_id("u")), None);
        assert!(actor_only.allowed("x", "y", &meta, false));
        assert!(!actor_only.allowed("x", "y", &meta, true));
        let scope_only = SecurityContext::new(None, s.group_scope(&EntryId::new("app", "user")));
        assert!(scope_only.allowed("x", "y", &meta, false));
        assert!(!scope_only.allowed("x", "y", &meta, true));
        let full = SecurityContext::new(
            Some(Actor::with_id("u")),
            s.group_scope(&EntryId::new("app", "user")),
        );
        for strict in [false, true] {
            assert!(full.allowed("read", "y", &meta, strict));
            assert!(!full.allowed("write", "y", &meta, strict));
        }
        // An empty scope (a token minted with no policies) denies everything in both modes.
        let empty = SecurityContext::new(Some(Actor::with_id("u")), Some(Scope::default()));
        assert!(!empty.allowed("read", "y", &meta, false));
        // Undefined is not allow even in permissive mode.
        let readonly = SecurityContext::new(
            Some(Actor::with_id("u")),
            s.group_scope(&EntryId::new("app", "readonly")),
        );
        assert!(!readonly.allowed("read", "y", &meta, false));
    }

    #[test]
    fn shared_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PolicySet>();
        check::<SecurityContext>();
        check::<Scope>();
        check::<CompiledPolicy>();
        check::<token::TokenStore>();
    }

    #[test]
    fn can_needs_actor_and_scope() {
        let s = set();
        let meta = J::Null;
        assert!(!SecurityContext::default().can("read", "y", &meta));
        assert!(!SecurityContext::new(Some(Actor::with_id("u")), None).can("read", "y", &meta));
        let user = s.group_scope(&EntryId::new("app", "user"));
        assert!(!SecurityContext::new(None, user.clone()).can("read", "y", &meta));
        let full = SecurityContext::new(Some(Actor::with_id("u")), user);
        assert!(full.can("read", "y", &meta));
        assert!(!full.can("write", "y", &meta));
    }
}
