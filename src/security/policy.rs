//! Compiled `security.policy` entries: action/resource patterns, conditions, evaluation (§7.2).

use crate::registry::kinds::{self, ConditionOp, ConditionValue, EntryId};
use crate::security::actor::Actor;
use regex::Regex;
use serde_json::Value as J;
use std::borrow::Cow;

/// Outcome of evaluating one policy or a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Deny,
    Undefined,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Undefined => "undefined",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action or resource pattern.
#[derive(Clone, Debug)]
pub enum Pattern {
    Any,
    Exact(String),
    /// Literal pieces between `*`s; `bare` is the pattern without a trailing `.*`, which also
    /// matches (`"process.spawn.*"` ∋ `"process.spawn"`).
    Glob {
        pieces: Vec<String>,
        bare: Option<Box<Pattern>>,
    },
}

impl Pattern {
    pub fn compile(p: &str) -> Pattern {
        if p == "*" {
            return Pattern::Any;
        }
        if !p.contains('*') {
            return Pattern::Exact(p.to_owned());
        }
        let bare = p
            .strip_suffix(".*")
            .map(|prefix| Box::new(Pattern::compile(prefix)));
        Pattern::Glob {
            pieces: p.split('*').map(str::to_owned).collect(),
            bare,
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => e == s,
            Pattern::Glob { pieces, bare } => {
                glob_pieces(pieces, s) || bare.as_ref().is_some_and(|b| b.matches(s))
            }
        }
    }
}

/// `pieces` are the literal runs of a pattern split at `*` (so there are at least two). The first
/// must be a prefix, the last a suffix, the middle ones appear in order; leftmost-first matching
/// of the middle pieces is optimal because `*` absorbs any gap.
fn glob_pieces(pieces: &[String], s: &str) -> bool {
    let (first, rest) = pieces.split_first().expect("a glob has pieces");
    let (last, middle) = rest.split_last().expect("a glob has at least two pieces");
    let Some(tail) = s.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some(mut body) = tail.strip_suffix(last.as_str()) else {
        return false;
    };
    for piece in middle {
        match body.find(piece.as_str()) {
            Some(i) => body = &body[i + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Where a condition reads a value from.
#[derive(Clone, Debug, PartialEq)]
enum Field {
    ActorId,
    ActorMeta(Vec<String>),
    Action,
    Resource,
    Meta(Vec<String>),
    /// Any other path: one literal key of the resource meta.
    Key(String),
}

impl Field {
    fn parse(path: &str) -> Field {
        let segments = |rest: &str| rest.split('.').map(str::to_owned).collect();
        match path {
            "actor.id" => Field::ActorId,
            "action" => Field::Action,
            "resource" => Field::Resource,
            _ => {
                if let Some(rest) = path.strip_prefix("actor.meta.") {
                    Field::ActorMeta(segments(rest))
                } else if let Some(rest) = path.strip_prefix("meta.") {
                    Field::Meta(segments(rest))
                } else {
                    Field::Key(path.to_owned())
                }
            }
        }
    }
}

/// A field as seen during one evaluation.
enum Resolved<'a> {
    Present(Cow<'a, J>),
    Missing,
    /// An `actor.*` field with no actor: the condition cannot be evaluated (§7.2).
    NoActor,
}

struct Input<'a> {
    actor: Option<&'a Actor>,
    action: &'a str,
    resource: &'a str,
    meta: &'a J,
}

impl<'a> Input<'a> {
    fn resolve(&self, field: &Field) -> Resolved<'a> {
        let present = |v: Option<&'a J>| match v {
            Some(J::Null) | None => Resolved::Missing,
            Some(v) => Resolved::Present(Cow::Borrowed(v)),
        };
        match field {
            Field::ActorId => match self.actor {
                Some(a) => Resolved::Present(Cow::Owned(J::String(a.id.clone()))),
                None => Resolved::NoActor,
            },
            Field::ActorMeta(path) => match self.actor {
                Some(a) => {
                    let (head, rest) = path.split_first().expect("split yields a segment");
                    present(a.meta.get(head).and_then(|v| walk(v, rest)))
                }
                None => Resolved::NoActor,
            },
            Field::Action => Resolved::Present(Cow::Owned(J::String(self.action.to_owned()))),
            Field::Resource => Resolved::Present(Cow::Owned(J::String(self.resource.to_owned()))),
            Field::Meta(path) => present(walk(self.meta, path)),
            Field::Key(k) => present(self.meta.get(k.as_str())),
        }
    }
}

fn walk<'v>(mut v: &'v J, path: &[String]) -> Option<&'v J> {
    for seg in path {
        v = match v {
            J::Object(o) => o.get(seg)?,
            J::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

#[derive(Clone, Debug)]
enum Operand {
    Literal(J),
    From(Field),
}

#[derive(Clone, Debug)]
struct CompiledCondition {
    field: Field,
    op: ConditionOp,
    operand: Operand,
    /// Pre-compiled `matches`/`nmatches` literal.
    regex: Option<Regex>,
}

impl CompiledCondition {
    fn compile(c: &kinds::Condition) -> Result<Self, String> {
        if c.field.trim().is_empty() {
            return Err("condition field is empty".into());
        }
        let operand = match &c.value {
            ConditionValue::Literal(J::Null) => {
                return Err(format!("condition on {:?} has no value", c.field))
            }
            ConditionValue::Literal(v) => Operand::Literal(v.clone()),
            ConditionValue::From(path) if path.trim().is_empty() => {
                return Err(format!(
                    "condition on {:?} has an empty value_from",
                    c.field
                ))
            }
            ConditionValue::From(path) => Operand::From(Field::parse(path)),
        };
        let regex = match (&c.operator, &operand) {
            (ConditionOp::Matches | ConditionOp::NMatches, Operand::Literal(v)) => {
                let J::String(src) = v else {
                    return Err(format!(
                        "condition on {:?}: regex must be a string",
                        c.field
                    ));
                };
                Some(
                    Regex::new(src)
                        .map_err(|e| format!("condition on {:?}: bad regex: {e}", c.field))?,
                )
            }
            _ => None,
        };
        Ok(CompiledCondition {
            field: Field::parse(&c.field),
            op: c.operator,
            operand,
            regex,
        })
    }

    fn holds(&self, input: &Input<'_>) -> bool {
        let field = match input.resolve(&self.field) {
            Resolved::NoActor => return false,
            Resolved::Missing => None,
            Resolved::Present(v) => Some(v),
        };
        let value = match &self.operand {
            Operand::Literal(v) => Cow::Borrowed(v),
            Operand::From(f) => match input.resolve(f) {
                Resolved::Present(v) => v,
                Resolved::Missing | Resolved::NoActor => return false,
            },
        };
        let value = value.as_ref();
        use ConditionOp as O;
        match self.op {
            O::Exists => field.is_some() && value == &J::Bool(true),
            O::NExists => field.is_none() && value == &J::Bool(true),
            op => {
                let Some(field) = field else { return false };
                let field = field.as_ref();
                match op {
                    O::Eq => loose_eq(field, value),
                    O::Ne => !loose_eq(field, value),
                    O::Lt | O::Gt | O::Lte | O::Gte => match (number(field), number(value)) {
                        (Some(a), Some(b)) => match op {
                            O::Lt => a < b,
                            O::Gt => a > b,
                            O::Lte => a <= b,
                            _ => a >= b,
                        },
                        _ => false,
                    },
                    O::In => member(field, value),
                    O::Nin => !member(field, value),
                    O::Contains => contains(field, value).unwrap_or(false),
                    O::NContains => contains(field, value).is_some_and(|c| !c),
                    O::Matches => self.regex_match(field, value).unwrap_or(false),
                    O::NMatches => self.regex_match(field, value).is_some_and(|m| !m),
                    O::Exists | O::NExists => unreachable!("handled above"),
                }
            }
        }
    }

    /// `None` when the regex cannot be applied (non-string field, bad dynamic regex).
    fn regex_match(&self, field: &J, value: &J) -> Option<bool> {
        let J::String(s) = field else { return None };
        match &self.regex {
            Some(re) => Some(re.is_match(s)),
            None => {
                let J::String(src) = value else { return None };
                Regex::new(src).ok().map(|re| re.is_match(s))
            }
        }
    }
}

/// Numeric view: JSON numbers and strings that parse as a finite number.
fn number(v: &J) -> Option<f64> {
    match v {
        J::Number(n) => n.as_f64(),
        J::String(s) => s.parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// String view of a scalar.
fn string_form(v: &J) -> Option<Cow<'_, str>> {
    match v {
        J::String(s) => Some(Cow::Borrowed(s)),
        J::Number(n) => Some(Cow::Owned(n.to_string())),
        J::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// `eq`: identical, else numerically equal, else equal string forms.
fn loose_eq(a: &J, b: &J) -> bool {
    if a == b {
        return true;
    }
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return x == y;
    }
    match (string_form(a), string_form(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// `in`: the field equals an element of a list value, or the scalar value itself.
fn member(field: &J, value: &J) -> bool {
    match value {
        J::Array(items) => items.iter().any(|i| loose_eq(field, i)),
        v => loose_eq(field, v),
    }
}

/// `contains`: substring of a string field or element of a list field; `None` = type mismatch.
fn contains(field: &J, value: &J) -> Option<bool> {
    match field {
        J::String(s) => string_form(value).map(|needle| s.contains(needle.as_ref())),
        J::Array(items) => Some(items.iter().any(|i| loose_eq(i, value))),
        _ => None,
    }
}

/// A `security.policy` entry ready to evaluate.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub id: EntryId,
    actions: Vec<Pattern>,
    resources: Vec<Pattern>,
    allow: bool,
    conditions: Vec<CompiledCondition>,
}

impl CompiledPolicy {
    pub fn compile(id: EntryId, p: &kinds::Policy) -> Result<Self, String> {
        if p.actions.is_empty() {
            return Err("policy.actions is empty".into());
        }
        if p.resources.is_empty() {
            return Err("policy.resources is empty".into());
        }
        let conditions = p
            .conditions
            .iter()
            .map(CompiledCondition::compile)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledPolicy {
            id,
            actions: p.actions.iter().map(|a| Pattern::compile(a)).collect(),
            resources: p.resources.iter().map(|r| Pattern::compile(r)).collect(),
            allow: p.allow,
            conditions,
        })
    }

    /// The decision this policy yields when it applies.
    pub fn effect(&self) -> Decision {
        if self.allow {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    /// `effect` when action and resource match and every condition holds, else `Undefined`.
    pub fn evaluate(
        &self,
        actor: Option<&Actor>,
        action: &str,
        resource: &str,
        meta: &J,
    ) -> Decision {
        if !self.actions.iter().any(|p| p.matches(action))
            || !self.resources.iter().any(|p| p.matches(resource))
        {
            return Decision::Undefined;
        }
        let input = Input {
            actor,
            action,
            resource,
            meta,
        };
        if self.conditions.iter().all(|c| c.holds(&input)) {
            self.effect()
        } else {
            Decision::Undefined
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn policy(actions: &[&str], resources: &[&str], allow: bool) -> kinds::Policy {
        kinds::Policy {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            allow,
            conditions: Vec::new(),
            groups: Vec::new(),
        }
    }

    pub(crate) fn compiled(name: &str, p: &kinds::Policy) -> CompiledPolicy {
        CompiledPolicy::compile(EntryId::new("app", name), p).unwrap()
    }

    fn cond(field: &str, op: &str, value: J) -> kinds::Condition {
        kinds::Condition {
            field: field.into(),
            operator: ConditionOp::parse(op).unwrap(),
            value: ConditionValue::Literal(value),
        }
    }

    fn cond_from(field: &str, op: &str, from: &str) -> kinds::Condition {
        kinds::Condition {
            field: field.into(),
            operator: ConditionOp::parse(op).unwrap(),
            value: ConditionValue::From(from.into()),
        }
    }

    fn actor() -> Actor {
        let meta = json!({"role": "admin", "level": 5, "tags": ["a", "b"], "org": {"id": "o1"}});
        Actor::new("user:1", meta.as_object().unwrap().clone())
    }

    /// Evaluates a single condition against a fixed actor, `read @ doc:1` and `meta`.
    fn check_with(c: kinds::Condition, actor: Option<&Actor>, meta: J) -> bool {
        let mut p = policy(&["*"], &["*"], true);
        p.conditions.push(c);
        compiled("c", &p).evaluate(actor, "read", "doc:1", &meta) == Decision::Allow
    }

    fn check(c: kinds::Condition, meta: J) -> bool {
        check_with(c, Some(&actor()), meta)
    }

    #[test]
    fn decision_strings() {
        assert_eq!(Decision::Allow.as_str(), "allow");
        assert_eq!(Decision::Deny.as_str(), "deny");
        assert_eq!(Decision::Undefined.as_str(), "undefined");
    }

    #[test]
    fn patterns() {
        let m = |p: &str, s: &str| Pattern::compile(p).matches(s);
        assert!(m("*", "anything"));
        assert!(m("*", ""));
        assert!(m("read", "read"));
        assert!(!m("read", "reader"));
        assert!(m("document:*", "document:1"));
        assert!(m("document:*", "document:"));
        assert!(!m("document:*", "doc:1"));
        assert!(m("*.read", "file.read"));
        assert!(m("*.read", "a.b.read"));
        assert!(!m("*.read", "file.write"));
        assert!(!m("*.read", "read"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "acb"));
        assert!(!m("ab*ba", "aba"), "prefix and suffix may not overlap");
        assert!(m("process.spawn.*", "process.spawn.linked"));
        assert!(m("process.spawn.*", "process.spawn"));
        assert!(!m("process.spawn.*", "process.spawner"));
        assert!(!m("process.spawn.*", "process"));
        assert!(
            m("a.*.*", "a"),
            "nested trailing .* still reaches the bare prefix"
        );
        assert!(m("**", "x"));
    }

    #[test]
    fn effect_needs_action_and_resource() {
        let p = compiled("p", &policy(&["read", "list"], &["doc:*"], true));
        let none = J::Null;
        assert_eq!(p.evaluate(None, "read", "doc:1", &none), Decision::Allow);
        assert_eq!(p.evaluate(None, "list", "doc:1", &none), Decision::Allow);
        assert_eq!(
            p.evaluate(None, "write", "doc:1", &none),
            Decision::Undefined
        );
        assert_eq!(
            p.evaluate(None, "read", "user:1", &none),
            Decision::Undefined
        );
        let d = compiled("d", &policy(&["*"], &["*"], false));
        assert_eq!(d.evaluate(None, "x", "y", &none), Decision::Deny);
    }

    #[test]
    fn eq_and_ne() {
        assert!(check(cond("actor.id", "eq", json!("user:1")), J::Null));
        assert!(!check(cond("actor.id", "eq", json!("user:2")), J::Null));
        assert!(check(cond("actor.id", "ne", json!("user:2")), J::Null));
        assert!(!check(cond("actor.id", "ne", json!("user:1")), J::Null));
        // Numeric coercion: numbers and numeric strings compare by value.
        assert!(check(cond("actor.meta.level", "eq", json!("5")), J::Null));
        assert!(check(cond("actor.meta.level", "eq", json!(5.0)), J::Null));
        assert!(check(cond("meta.n", "eq", json!("1e1")), json!({"n": 10})));
        // String forms: booleans against strings.
        assert!(check(
            cond("meta.flag", "eq", json!("true")),
            json!({"flag": true})
        ));
        assert!(!check(
            cond("meta.flag", "eq", json!(1)),
            json!({"flag": true})
        ));
        // Structured values only equal when identical.
        assert!(check(
            cond("actor.meta.tags", "eq", json!(["a", "b"])),
            J::Null
        ));
        assert!(!check(cond("actor.meta.tags", "eq", json!("a")), J::Null));
        // Missing field: both false.
        assert!(!check(cond("meta.nope", "eq", json!("x")), json!({})));
        assert!(!check(cond("meta.nope", "ne", json!("x")), json!({})));
    }

    #[test]
    fn ordering() {
        assert!(check(cond("actor.meta.level", "gt", json!(4)), J::Null));
        assert!(!check(cond("actor.meta.level", "gt", json!(5)), J::Null));
        assert!(check(cond("actor.meta.level", "gte", json!(5)), J::Null));
        assert!(check(cond("actor.meta.level", "lt", json!("6")), J::Null));
        assert!(!check(cond("actor.meta.level", "lt", json!(5)), J::Null));
        assert!(check(cond("actor.meta.level", "lte", json!(5)), J::Null));
        assert!(check(
            cond("meta.size", "lt", json!(100)),
            json!({"size": "99.5"})
        ));
        // Non-numeric on either side is false for every comparison.
        for op in ["lt", "gt", "lte", "gte"] {
            assert!(
                !check(cond("actor.meta.role", op, json!(1)), J::Null),
                "{op}"
            );
            assert!(
                !check(cond("actor.meta.level", op, json!("abc")), J::Null),
                "{op}"
            );
            assert!(
                !check(cond("meta.missing", op, json!(1)), json!({})),
                "{op}"
            );
        }
        assert!(!check(cond("meta.n", "lt", json!(1)), json!({"n": "NaN"})));
    }

    #[test]
    fn in_and_nin() {
        assert!(check(
            cond("actor.meta.role", "in", json!(["user", "admin"])),
            J::Null
        ));
        assert!(!check(
            cond("actor.meta.role", "in", json!(["user"])),
            J::Null
        ));
        assert!(check(cond("actor.meta.level", "in", json!(["5"])), J::Null));
        assert!(
            check(cond("actor.meta.role", "in", json!("admin")), J::Null),
            "scalar ⇒ eq"
        );
        assert!(check(
            cond("actor.meta.role", "nin", json!(["user"])),
            J::Null
        ));
        assert!(!check(
            cond("actor.meta.role", "nin", json!(["admin"])),
            J::Null
        ));
        assert!(!check(cond("meta.x", "in", json!(["a"])), json!({})));
        assert!(!check(cond("meta.x", "nin", json!(["a"])), json!({})));
    }

    #[test]
    fn contains_and_ncontains() {
        assert!(check(cond("resource", "contains", json!("doc")), J::Null));
        assert!(!check(cond("resource", "contains", json!("user")), J::Null));
        assert!(check(cond("resource", "ncontains", json!("user")), J::Null));
        assert!(check(
            cond("actor.meta.tags", "contains", json!("a")),
            J::Null
        ));
        assert!(!check(
            cond("actor.meta.tags", "contains", json!("c")),
            J::Null
        ));
        assert!(check(
            cond("actor.meta.tags", "ncontains", json!("c")),
            J::Null
        ));
        assert!(check(
            cond("meta.ids", "contains", json!("2")),
            json!({"ids": [1, 2]})
        ));
        assert!(check(
            cond("meta.s", "contains", json!(12)),
            json!({"s": "a12b"})
        ));
        // Type mismatch: a number field has neither.
        assert!(!check(
            cond("actor.meta.level", "contains", json!("5")),
            J::Null
        ));
        assert!(!check(
            cond("actor.meta.level", "ncontains", json!("5")),
            J::Null
        ));
        assert!(!check(cond("meta.x", "contains", json!("a")), json!({})));
        assert!(!check(cond("meta.x", "ncontains", json!("a")), json!({})));
    }

    #[test]
    fn matches_and_nmatches() {
        assert!(check(
            cond("actor.id", "matches", json!("^user:\\d+$")),
            J::Null
        ));
        assert!(!check(
            cond("actor.id", "matches", json!("^admin:")),
            J::Null
        ));
        assert!(check(
            cond("actor.id", "nmatches", json!("^admin:")),
            J::Null
        ));
        assert!(!check(cond("actor.id", "nmatches", json!("user")), J::Null));
        assert!(
            check(cond("resource", "matches", json!("doc")), J::Null),
            "unanchored"
        );
        assert!(!check(
            cond("actor.meta.level", "matches", json!("5")),
            J::Null
        ));
        assert!(!check(
            cond("actor.meta.level", "nmatches", json!("x")),
            J::Null
        ));
        assert!(!check(cond("meta.x", "matches", json!(".*")), json!({})));
        assert!(!check(cond("meta.x", "nmatches", json!("a")), json!({})));
    }

    #[test]
    fn exists_and_nexists() {
        assert!(check(
            cond("actor.meta.role", "exists", json!(true)),
            J::Null
        ));
        assert!(!check(
            cond("actor.meta.nope", "exists", json!(true)),
            J::Null
        ));
        assert!(!check(
            cond("actor.meta.nope", "nexists", json!(false)),
            J::Null
        ));
        assert!(check(
            cond("actor.meta.nope", "nexists", json!(true)),
            J::Null
        ));
        assert!(!check(
            cond("actor.meta.role", "nexists", json!(true)),
            J::Null
        ));
        assert!(!check(
            cond("actor.meta.role", "exists", json!(false)),
            J::Null
        ));
        assert!(check(
            cond("meta.k", "nexists", json!(true)),
            json!({"k": null})
        ));
    }

    #[test]
    fn field_paths() {
        let meta = json!({"owner": "user:1", "doc": {"dept": {"id": "d1"}}, "list": ["x", "y"],
                          "dotted.key": 1, "plain": "p"});
        assert!(check(cond("action", "eq", json!("read")), meta.clone()));
        assert!(check(cond("resource", "eq", json!("doc:1")), meta.clone()));
        assert!(check(
            cond("actor.meta.org.id", "eq", json!("o1")),
            meta.clone()
        ));
        assert!(check(
            cond("meta.doc.dept.id", "eq", json!("d1")),
            meta.clone()
        ));
        assert!(check(cond("meta.list.1", "eq", json!("y")), meta.clone()));
        assert!(!check(
            cond("meta.doc.dept.id.deeper", "exists", json!(true)),
            meta.clone()
        ));
        // Any other path is one literal meta key.
        assert!(check(cond("plain", "eq", json!("p")), meta.clone()));
        assert!(check(cond("dotted.key", "eq", json!(1)), meta.clone()));
        assert!(!check(
            cond("doc.dept.id", "exists", json!(true)),
            meta.clone()
        ));
        // Scalar or absent meta: meta paths are simply missing.
        assert!(!check(
            cond("meta.a", "exists", json!(true)),
            json!("scalar")
        ));
        assert!(check(cond("meta.a", "nexists", json!(true)), J::Null));
    }

    #[test]
    fn value_from() {
        let meta = json!({"owner": "user:1", "other": "user:2", "limit": 10, "allowed": ["admin"]});
        assert!(check(
            cond_from("actor.id", "eq", "meta.owner"),
            meta.clone()
        ));
        assert!(!check(
            cond_from("actor.id", "eq", "meta.other"),
            meta.clone()
        ));
        assert!(check(cond_from("actor.id", "ne", "other"), meta.clone()));
        assert!(check(
            cond_from("actor.meta.level", "lt", "meta.limit"),
            meta.clone()
        ));
        assert!(check(
            cond_from("actor.meta.role", "in", "meta.allowed"),
            meta.clone()
        ));
        assert!(check(
            cond_from("meta.owner", "eq", "actor.id"),
            meta.clone()
        ));
        // A missing source makes the condition false, whatever the operator.
        assert!(!check(
            cond_from("actor.id", "eq", "meta.nope"),
            meta.clone()
        ));
        assert!(!check(
            cond_from("actor.id", "ne", "meta.nope"),
            meta.clone()
        ));
        assert!(!check(
            cond_from("meta.nope", "nexists", "meta.nope2"),
            meta.clone()
        ));
        // Regex from a field, compiled at evaluation time; a bad one is false.
        let m = json!({"re": "^user:", "bad": "("});
        assert!(check(
            cond_from("actor.id", "matches", "meta.re"),
            m.clone()
        ));
        assert!(!check(
            cond_from("actor.id", "matches", "meta.bad"),
            m.clone()
        ));
        assert!(!check(cond_from("actor.id", "nmatches", "meta.bad"), m));
        // value_from an actor field without an actor.
        assert!(!check_with(
            cond_from("meta.owner", "eq", "actor.id"),
            None,
            meta
        ));
    }

    #[test]
    fn no_actor_makes_actor_conditions_false() {
        for (op, v) in [
            ("eq", json!("user:1")),
            ("ne", json!("x")),
            ("nexists", json!(true)),
            ("exists", json!(true)),
            ("nin", json!(["x"])),
            ("nmatches", json!("x")),
            ("ncontains", json!("x")),
        ] {
            assert!(
                !check_with(cond("actor.id", op, v.clone()), None, J::Null),
                "{op}"
            );
            assert!(
                !check_with(cond("actor.meta.role", op, v), None, J::Null),
                "{op}"
            );
        }
        // Conditions not about the actor still evaluate.
        assert!(check_with(
            cond("resource", "eq", json!("doc:1")),
            None,
            J::Null
        ));
    }

    #[test]
    fn conditions_are_anded() {
        let mut p = policy(&["*"], &["*"], false);
        p.conditions
            .push(cond("actor.meta.role", "eq", json!("admin")));
        p.conditions.push(cond("meta.dept", "eq", json!("x")));
        let p = compiled("and", &p);
        let a = actor();
        assert_eq!(
            p.evaluate(Some(&a), "r", "s", &json!({"dept": "x"})),
            Decision::Deny
        );
        assert_eq!(
            p.evaluate(Some(&a), "r", "s", &json!({"dept": "y"})),
            Decision::Undefined
        );
    }

    #[test]
    fn compile_rejects_bad_conditions() {
        let bad = |c: kinds::Condition| {
            let mut p = policy(&["*"], &["*"], true);
            p.conditions.push(c);
            CompiledPolicy::compile(EntryId::new("app", "bad"), &p).unwrap_err()
        };
        assert!(bad(cond("", "eq", json!(1))).contains("empty"));
        assert!(bad(cond("meta.x", "eq", J::Null)).contains("no value"));
        assert!(bad(cond("meta.x", "matches", json!("("))).contains("regex"));
        assert!(bad(cond("meta.x", "matches", json!(5))).contains("regex"));
        assert!(bad(cond_from("meta.x", "eq", " ")).contains("value_from"));
        let empty = policy(&[], &["*"], true);
        assert!(CompiledPolicy::compile(EntryId::new("a", "b"), &empty).is_err());
        let empty = policy(&["*"], &[], true);
        assert!(CompiledPolicy::compile(EntryId::new("a", "b"), &empty).is_err());
    }
}
