//! Per-process memory caps (`max_memory` on a `process.lua` or `function.lua` entry) inside a
//! worker's shared Lua state.
//!
//! A worker that runs a capped process gets an allocator in front of mlua's. While a capped
//! process is being polled, every block Lua allocates is recorded as that process's, and freeing
//! the block (whenever the collector does it, whoever runs then) credits the process back. A
//! growth past the cap fails the way Lua's allocator failures do: Lua first runs an emergency
//! full collection and retries, then raises "not enough memory" in the process, which ends it
//! (`pcall` can catch it, as in plain Lua). Processes without a cap are never charged.
//!
//! The cost: on such a worker every allocation and free looks up the block's owner, and mlua,
//! which can no longer see its own allocator, guards its allocations with protected calls.
//! Workers that never run a capped process keep mlua's allocator untouched.

#![allow(unsafe_code)]

use crate::process::table::IdHasher;
use mlua::ffi;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

/// The Lua heap one capped process holds: the bytes of the live blocks it allocated.
#[derive(Debug)]
pub struct MemoryAccount {
    used: Cell<usize>,
    limit: usize,
}

impl MemoryAccount {
    pub fn new(limit: usize) -> Rc<MemoryAccount> {
        Rc::new(MemoryAccount {
            used: Cell::new(0),
            limit,
        })
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

type Owners = HashMap<usize, Rc<MemoryAccount>, BuildHasherDefault<IdHasher>>;

thread_local! {
    /// The account charged for new blocks now: the capped process being polled, if any.
    static CHARGED: RefCell<Option<Rc<MemoryAccount>>> = const { RefCell::new(None) };
    /// The owner of every live block a capped process allocated, by address.
    static OWNERS: RefCell<Owners> = RefCell::new(Owners::default());
    /// Whether this thread's Lua state has the capping allocator in front of mlua's.
    static INSTALLED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with `account` charged for what Lua allocates (no account: nothing is charged).
pub fn charged<R>(account: Option<&Rc<MemoryAccount>>, f: impl FnOnce() -> R) -> R {
    let prev = CHARGED.with(|c| c.replace(account.cloned()));
    struct Restore(Option<Rc<MemoryAccount>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            let _ = CHARGED.try_with(|c| *c.borrow_mut() = prev);
        }
    }
    let _restore = Restore(prev);
    f()
}

/// Whether this thread's Lua state can fail an allocation (a capping allocator is in front of
/// mlua's); raw Lua calls that allocate must then run protected.
pub fn installed() -> bool {
    INSTALLED.with(|i| i.get())
}

/// Puts the capping allocator in front of `lua`'s (once per thread; `lua` is the worker's state).
pub fn install(lua: &mlua::Lua) {
    if INSTALLED.with(|i| i.replace(true)) {
        return;
    }
    // SAFETY: the allocator pair is read and replaced on the state's own thread, before any
    // capped allocation; the previous pair stays valid for the state's life (mlua owns it), and
    // `Inner` is leaked so that it outlives the state, whose last frees still go through it.
    let installed = unsafe {
        lua.exec_raw::<()>((), |state| {
            let mut ud = std::ptr::null_mut();
            let alloc = ffi::lua_getallocf(state, &mut ud);
            let inner = Box::into_raw(Box::new(Inner { alloc, ud }));
            ffi::lua_setallocf(state, capped_alloc, inner.cast());
        })
    };
    if let Err(e) = installed {
        INSTALLED.with(|i| i.set(false));
        tracing::error!(error = %e, "memory caps unavailable on this worker");
    }
}

/// The allocator the capping one forwards to (mlua's).
struct Inner {
    alloc: ffi::lua_Alloc,
    ud: *mut c_void,
}

fn take_owner(ptr: *mut c_void) -> Option<Rc<MemoryAccount>> {
    OWNERS
        .try_with(|o| {
            let mut owners = o.try_borrow_mut().ok()?;
            if owners.is_empty() {
                return None;
            }
            owners.remove(&(ptr as usize))
        })
        .ok()
        .flatten()
}

fn put_owner(ptr: *mut c_void, owner: Rc<MemoryAccount>) {
    let _ = OWNERS.try_with(|o| {
        if let Ok(mut owners) = o.try_borrow_mut() {
            owners.insert(ptr as usize, owner);
        }
    });
}

fn charged_now() -> Option<Rc<MemoryAccount>> {
    CHARGED
        .try_with(|c| c.try_borrow().ok().and_then(|a| a.clone()))
        .ok()
        .flatten()
}

/// Lua's allocator contract: `ptr` null = a new block (`osize` is then a type tag, not a size);
/// `nsize` 0 = free; it must never fail when a block shrinks.
///
/// Ownership: a new block belongs to the account charged now (if any). A block that grows
/// passes to the account charged now, or to none: whoever grows a shared structure (the
/// interned-string table, a global table) pays for it, not whoever grew it first. A block that
/// shrinks keeps its owner, who is credited.
unsafe extern "C" fn capped_alloc(
    ud: *mut c_void,
    ptr: *mut c_void,
    osize: usize,
    nsize: usize,
) -> *mut c_void {
    // SAFETY: `ud` is the leaked `Inner` that `install` registered with this allocator.
    let inner = unsafe { &*(ud as *const Inner) };
    let old_owner = if ptr.is_null() { None } else { take_owner(ptr) };
    if nsize == 0 {
        if let Some(old) = &old_owner {
            old.used.set(old.used.get().saturating_sub(osize));
        }
        // SAFETY: forwarding the free to the allocator every block came from.
        return unsafe { (inner.alloc)(inner.ud, ptr, osize, 0) };
    }
    let grows = ptr.is_null() || nsize > osize;
    let owner = match (&old_owner, grows) {
        (_, true) => charged_now(),
        (old, false) => old.clone(),
    };
    // What the block already counts towards its new owner.
    let kept = match (&old_owner, &owner) {
        (Some(old), Some(new)) if Rc::ptr_eq(old, new) => osize,
        _ => 0,
    };
    if let Some(owner) = &owner {
        if grows && owner.used.get().saturating_sub(kept) + nsize > owner.limit {
            if let Some(old) = old_owner {
                put_owner(ptr, old);
            }
            return std::ptr::null_mut();
        }
    }
    // SAFETY: forwarding the request to the allocator every block came from.
    let block = unsafe { (inner.alloc)(inner.ud, ptr, osize, nsize) };
    if block.is_null() {
        if let Some(old) = old_owner {
            put_owner(ptr, old);
        }
        return block;
    }
    if let Some(old) = &old_owner {
        if kept == 0 {
            old.used.set(old.used.get().saturating_sub(osize));
        }
    }
    if let Some(owner) = owner {
        owner
            .used
            .set(owner.used.get().saturating_sub(kept) + nsize);
        put_owner(block, owner);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lua: &mlua::Lua, account: Option<&Rc<MemoryAccount>>, code: &str) -> mlua::Result<()> {
        charged(account, || lua.load(code).exec())
    }

    #[test]
    fn a_capped_chunk_is_stopped_at_its_cap_and_credited_for_what_it_frees() {
        // Its own thread: the allocator is installed per thread, once.
        std::thread::spawn(|| {
            let lua = mlua::Lua::new();
            install(&lua);
            let capped = MemoryAccount::new(256 << 10);

            // Garbage it makes and drops is credited back: 20 MB churned under a 256 KB cap.
            run(
                &lua,
                Some(&capped),
                "for i = 1, 20000 do local t = {string.rep('x', 1000 + i % 7)} end",
            )
            .unwrap();
            lua.gc_collect().unwrap();
            assert!(
                capped.used() < 64 << 10,
                "after a collection: {}",
                capped.used()
            );

            // What it keeps is not: it fails with Lua's memory error at the cap.
            let err = run(
                &lua,
                Some(&capped),
                "keep = {} for i = 1, 1e6 do keep[i] = string.rep('y', 100) .. i end",
            )
            .unwrap_err();
            assert!(matches!(err, mlua::Error::MemoryError(_)), "{err:?}");
            assert!(capped.used() <= capped.limit());

            // Uncapped code on the same state is unaffected, and charges nothing to it (shared
            // structures it grows, like the interned-string table, even pass to no one).
            let before = capped.used();
            run(
                &lua,
                None,
                "big = {} for i = 1, 20000 do big[i] = string.rep('z', 100) .. i end",
            )
            .unwrap();
            assert!(capped.used() <= before, "{} > {before}", capped.used());

            // Dropping what the capped code kept gives its bytes back.
            run(&lua, None, "keep = nil").unwrap();
            lua.gc_collect().unwrap();
            lua.gc_collect().unwrap();
            assert!(
                capped.used() < 64 << 10,
                "after dropping it: {}",
                capped.used()
            );
        })
        .join()
        .unwrap();
    }
}
