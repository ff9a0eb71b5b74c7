//! The actor of a security context: who is acting (`{id, meta}`, §7.1).

/// An identity. `id` is kept byte-for-byte as given (`"user:demo"`); `meta` is free-form.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Actor {
    pub id: String,
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl Actor {
    pub fn new(id: impl Into<String>, meta: serde_json::Map<String, serde_json::Value>) -> Self {
        Actor {
            id: id.into(),
            meta,
        }
    }

    /// An actor without metadata.
    pub fn with_id(id: impl Into<String>) -> Self {
        Actor::new(id, serde_json::Map::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_kept_verbatim() {
        let a = Actor::with_id("user:demo");
        assert_eq!(a.id, "user:demo");
        assert!(a.meta.is_empty());
    }
}
