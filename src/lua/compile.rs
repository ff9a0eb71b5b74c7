//! Compiles Lua sources once to bytecode; processes and calls instantiate from the bytecode so
//! each gets its own chunk-level locals without paying for a parse.

use crate::registry::kinds::{EntryId, LuaCode};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static VERSION: AtomicU64 = AtomicU64::new(1);

/// A `process.lua` / `function.lua` entry ready to run.
#[derive(Debug)]
pub struct CompiledCode {
    pub entry: EntryId,
    pub chunk_name: String,
    pub bytecode: Vec<u8>,
    pub method: String,
    pub modules: Vec<String>,
    pub imports: BTreeMap<String, EntryId>,
    /// Unique per compilation: caches keyed by it never serve stale code after a reload.
    pub version: u64,
    pub is_process: bool,
    /// `max_memory`: the Lua heap one process of this entry may hold.
    pub max_memory: Option<usize>,
}

thread_local! {
    static SCRATCH: mlua::Lua = mlua::Lua::new();
}

/// Compiles `code` (syntax errors come back as mlua's `chunk:line: message`).
pub fn compile(
    entry: &EntryId,
    code: &LuaCode,
    is_process: bool,
) -> Result<Arc<CompiledCode>, String> {
    let bytecode = SCRATCH.with(|lua| {
        lua.load(code.source.as_str())
            .set_name(format!("@{}", code.chunk_name))
            .into_function()
            .map(|f| f.dump(false))
            .map_err(|e| syntax_message(&e))
    })?;
    Ok(Arc::new(CompiledCode {
        entry: entry.clone(),
        chunk_name: code.chunk_name.clone(),
        bytecode,
        method: code.method.clone(),
        modules: code.modules.clone(),
        imports: code.imports.clone(),
        version: VERSION.fetch_add(1, Ordering::Relaxed),
        is_process,
        max_memory: code.max_memory,
    }))
}

/// The registry loader's Lua check: `Err(message)` on a syntax error.
pub fn check_syntax(chunk_name: &str, source: &str) -> Result<(), String> {
    SCRATCH.with(|lua| {
        lua.load(source)
            .set_name(format!("@{chunk_name}"))
            .into_function()
            .map(|_| ())
            .map_err(|e| syntax_message(&e))
    })
}

fn syntax_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = check_syntax("scripts/x.lua", "local a = 1\nfunction (").unwrap_err();
        assert!(err.starts_with("scripts/x.lua:2:"), "{err}");
    }

    #[test]
    fn versions_are_unique() {
        let code = LuaCode {
            source: "return {}".into(),
            chunk_name: "t".into(),
            method: "main".into(),
            modules: vec![],
            imports: Default::default(),
            max_memory: None,
        };
        let id = EntryId::new("t", "x");
        let a = compile(&id, &code, true).unwrap();
        let b = compile(&id, &code, true).unwrap();
        assert_ne!(a.version, b.version);
    }
}
