//! Lazy preemption of process bodies.
//!
//! Why: a count hook makes Lua call `luaG_traceexec` before every instruction and `rethook`
//! after every return, whether or not the hook is due; in callgrind that was ~16 % of a
//! message round trip and ~4 % of an HTTP request. So the coroutines the scheduler polls (process
//! bodies and handler calls) run with no hook at all. A watchdog thread looks at every worker
//! thread once per `TIME_SLICE`; a worker found inside the same step as at its previous look
//! gets a signal, and the handler gives the body that worker is running a count hook of 1.
//! The next instruction then calls the usual hook (`worker::preemption_hook`, through mlua's
//! global hook procedure), which yields or stops the body exactly as the always-on hook did.
//! A step that ends disarms the hook again. Everything else keeps the periodic count hook:
//! the worker's main state, and every coroutine a script creates (`hook_every`).
//!
//! Audit:
//! - The signal handler reads two const-initialised thread-locals (atomics, no destructor)
//!   and calls `lua_sethook` on the state its own thread published as running. Lua documents
//!   `lua_sethook` as safe to call asynchronously from a signal (lua.c stops a script on
//!   Ctrl-C that way); the handler runs on the interrupted thread, so no other thread ever
//!   touches a Lua state here.
//! - The watchdog only sends signals. It holds the slot list's lock while it does, and a
//!   worker thread removes its slot under that lock before it ends, so every signalled
//!   thread is alive.
//! - `Step` clears the published state before it disarms, so a signal that arrives after the
//!   step finds nothing to arm; one that arrived before has set `ARMED`, which `Step` sees.
#![allow(unsafe_code)]

use crate::lua::worker::TIME_SLICE;
use mlua::ffi;
use std::cell::OnceCell;
use std::ptr::null_mut;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

/// Instructions between two calls of the periodic hook (main state, script coroutines).
pub const HOOK_EVERY: i32 = 20_000;

/// mlua's global hook procedure (it calls `worker::preemption_hook`), as an address.
static HOOK: AtomicUsize = AtomicUsize::new(0);

/// Every thread that has run a step: what the watchdog looks at.
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

thread_local! {
    /// The body this thread is resuming right now (null between steps). Read by the handler.
    static RUNNING: AtomicPtr<ffi::lua_State> = const { AtomicPtr::new(null_mut()) };
    /// Set by the handler when it armed `RUNNING`; `Step` disarms.
    static ARMED: AtomicBool = const { AtomicBool::new(false) };
    static REGISTRATION: OnceCell<Registration> = const { OnceCell::new() };
}

struct Slot {
    /// Odd while a step runs; bumped at each start and end (only by the owning thread).
    steps: AtomicU64,
    /// The watchdog's own: `steps` at its previous look, and the step it last signalled.
    seen: AtomicU64,
    signalled: AtomicU64,
    thread: libc::pthread_t,
}

struct Registration(Arc<Slot>);

impl Drop for Registration {
    fn drop(&mut self) {
        let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|s| !Arc::ptr_eq(s, &self.0));
    }
}

/// Bumps this thread's step counter (registering the thread on its first step).
fn bump_steps() {
    REGISTRATION.with(|r| {
        let slot = &r
            .get_or_init(|| {
                start_watchdog();
                let slot = Arc::new(Slot {
                    steps: AtomicU64::new(0),
                    seen: AtomicU64::new(0),
                    signalled: AtomicU64::new(u64::MAX),
                    // SAFETY: no preconditions.
                    thread: unsafe { libc::pthread_self() },
                });
                SLOTS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(slot.clone());
                Registration(slot)
            })
            .0;
        // Only this thread writes it: a load and a store, no read-modify-write.
        let n = slot.steps.load(Ordering::Relaxed);
        slot.steps.store(n.wrapping_add(1), Ordering::Relaxed);
    })
}

fn signal_number() -> libc::c_int {
    // glibc keeps the first real-time signals for itself and moves SIGRTMIN past them.
    libc::SIGRTMIN() + 3
}

extern "C" fn on_signal(_: libc::c_int) {
    let state = RUNNING.with(|r| r.load(Ordering::Relaxed));
    let Some(hook) = global_hook() else {
        return;
    };
    if state.is_null() {
        return;
    }
    ARMED.with(|a| a.store(true, Ordering::Relaxed));
    // SAFETY: `state` is the live body this thread was resuming when interrupted (see the
    // module audit).
    unsafe { ffi::lua_sethook(state, Some(hook), ffi::LUA_MASKCOUNT, 1) };
}

/// The procedure `remember_hook` recorded, once a worker has started.
fn global_hook() -> Option<ffi::lua_Hook> {
    let hook = HOOK.load(Ordering::Relaxed);
    // SAFETY: a non-zero `HOOK` was stored from a `lua_Hook` (see `remember_hook`).
    (hook != 0).then(|| unsafe { std::mem::transmute::<usize, ffi::lua_Hook>(hook) })
}

fn start_watchdog() {
    static START: Once = Once::new();
    START.call_once(|| {
        // SAFETY: a plain handler installation; the handler is async-signal-safe (see above).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal_number(), &action, std::ptr::null_mut());
        }
        let spawned = std::thread::Builder::new()
            .name("moonwire-watch".into())
            .spawn(watchdog);
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the preemption watchdog; runaway processes will not be preempted");
        }
    });
}

fn watchdog() {
    loop {
        std::thread::sleep(TIME_SLICE);
        let slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots.iter() {
            let steps = slot.steps.load(Ordering::Relaxed);
            let before = slot.seen.swap(steps, Ordering::Relaxed);
            let same_step = steps & 1 == 1 && steps == before;
            if same_step && slot.signalled.swap(steps, Ordering::Relaxed) != steps {
                // SAFETY: the thread is alive while its slot is listed (we hold the lock).
                unsafe { libc::pthread_kill(slot.thread, signal_number()) };
            }
        }
    }
}

/// Remembers the hook procedure of a thread mlua created (it carries the global hook), for
/// the signal handler to arm bodies with.
pub fn remember_hook(thread: &mlua::Thread) {
    // SAFETY: reads a field of a live thread.
    if let Some(hook) = unsafe { ffi::lua_gethook(thread.state()) } {
        HOOK.store(hook as usize, Ordering::Relaxed);
    }
}

/// Gives a script's own coroutine the periodic hook: the watchdog arms only bodies, and a
/// coroutine created inside a body inherits the body's (absent) hook.
pub fn hook_every(thread: &mlua::Thread) {
    let Some(hook) = global_hook() else {
        return;
    };
    // SAFETY: a live thread of this worker's state.
    unsafe { ffi::lua_sethook(thread.state(), Some(hook), ffi::LUA_MASKCOUNT, HOOK_EVERY) };
}

/// Called by the hook when it fires: a body the watchdog armed (count 1) goes back to the
/// periodic count. Where the hook cannot yield (a `table.sort` comparator, a `gsub`
/// callback) the code then runs at full speed until the run budget, as with the periodic
/// hook, instead of calling the hook before every instruction.
pub fn settle(thread: &mlua::Thread) {
    // SAFETY: fields of the running thread, from inside its own hook (Lua allows changing a
    // hook there).
    unsafe {
        let state = thread.state();
        if ffi::lua_gethookcount(state) == 1 {
            let hook = ffi::lua_gethook(state);
            ffi::lua_sethook(state, hook, ffi::LUA_MASKCOUNT, HOOK_EVERY);
        }
    }
}

/// One step of a body: hook-free, and visible to the watchdog until dropped.
pub struct Step {
    state: *mut ffi::lua_State,
    previous: *mut ffi::lua_State,
}

impl Step {
    pub fn begin(body: &mlua::Thread) -> Step {
        // SAFETY: a live thread, owned by this worker, kept alive by the caller's handle.
        unsafe { Step::begin_state(body.state()) }
    }

    /// `begin` for a process body held without an mlua handle; `body` outlives the step.
    pub fn begin_held(body: &crate::lua::resume::HeldThread) -> Step {
        // SAFETY: the registry key of `body` keeps the thread alive during the step.
        unsafe { Step::begin_state(body.state()) }
    }

    /// # Safety
    /// `state` is a live coroutine of this worker's Lua state that outlives the `Step`.
    unsafe fn begin_state(state: *mut ffi::lua_State) -> Step {
        unsafe {
            // A thread mlua created carries the global hook; a step that ended armed and was
            // not disarmed (a nested step, see below) still has the count-1 hook.
            if ffi::lua_gethookmask(state) != 0 {
                ffi::lua_sethook(state, None, 0, 0);
            }
        }
        compiler_fence(Ordering::SeqCst);
        let previous = RUNNING.with(|r| r.swap(state, Ordering::Relaxed));
        // A step inside a step (a body resumed synchronously by another) leaves the watchdog's
        // view to the outer one.
        if previous.is_null() {
            bump_steps();
        }
        Step { state, previous }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        RUNNING.with(|r| r.store(self.previous, Ordering::Relaxed));
        compiler_fence(Ordering::SeqCst);
        if self.previous.is_null() {
            bump_steps();
        }
        if ARMED.with(|a| a.swap(false, Ordering::Relaxed)) {
            // SAFETY: the thread this step resumed; still alive (the caller holds it).
            unsafe { ffi::lua_sethook(self.state, None, 0, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's step counter as the watchdog reads it.
    fn steps() -> u64 {
        REGISTRATION.with(|r| r.get().map_or(0, |r| r.0.steps.load(Ordering::Relaxed)))
    }

    fn hook_mask(t: &mlua::Thread) -> i32 {
        // SAFETY: reads a field of a live thread.
        unsafe { ffi::lua_gethookmask(t.state()) }
    }

    #[test]
    fn a_step_runs_its_body_without_a_hook_and_a_script_coroutine_keeps_one() {
        let lua = mlua::Lua::new();
        lua.set_global_hook(
            mlua::HookTriggers::new().every_nth_instruction(HOOK_EVERY as u32),
            |_, _| Ok(mlua::VmState::Continue),
        )
        .unwrap();
        let f: mlua::Function = lua.load("return function() end").eval().unwrap();
        let body = lua.create_thread(f.clone()).unwrap();
        remember_hook(&body);
        assert_ne!(
            hook_mask(&body),
            0,
            "mlua gives new threads the global hook"
        );
        {
            let _step = Step::begin(&body);
            assert_eq!(hook_mask(&body), 0);
            assert_eq!(RUNNING.with(|r| r.load(Ordering::Relaxed)), body.state());
        }
        assert!(RUNNING.with(|r| r.load(Ordering::Relaxed)).is_null());
        // A step inside a step hands the published body back when it ends.
        let inner_body = lua.create_thread(f.clone()).unwrap();
        {
            let _outer = Step::begin(&body);
            let during = steps();
            assert_eq!(during % 2, 1, "odd while a step runs");
            {
                let _inner = Step::begin(&inner_body);
                assert_eq!(
                    RUNNING.with(|r| r.load(Ordering::Relaxed)),
                    inner_body.state()
                );
            }
            assert_eq!(RUNNING.with(|r| r.load(Ordering::Relaxed)), body.state());
            assert_eq!(
                steps(),
                during,
                "an inner step leaves the count to the outer one"
            );
        }
        assert!(RUNNING.with(|r| r.load(Ordering::Relaxed)).is_null());
        assert_eq!(steps() % 2, 0, "even between steps");
        let script_co = lua.create_thread(f).unwrap();
        // SAFETY: test only.
        unsafe { ffi::lua_sethook(script_co.state(), None, 0, 0) };
        hook_every(&script_co);
        // SAFETY: reads a field of a live thread.
        assert_eq!(
            unsafe { ffi::lua_gethookcount(script_co.state()) },
            HOOK_EVERY
        );
    }

    /// A state whose global hook counts its calls and yields or continues (calling `settle`
    /// first when asked), and a body thread running `src`.
    fn hooked_body(
        src: &str,
        yields: bool,
        settles: bool,
    ) -> (mlua::Lua, mlua::Thread, std::rc::Rc<std::cell::Cell<u32>>) {
        let lua = mlua::Lua::new();
        let hits = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let seen = hits.clone();
        lua.set_global_hook(
            mlua::HookTriggers::new().every_nth_instruction(HOOK_EVERY as u32),
            move |lua, _| {
                if settles {
                    settle(&lua.current_thread());
                }
                seen.set(seen.get() + 1);
                Ok(if yields {
                    mlua::VmState::Yield
                } else {
                    mlua::VmState::Continue
                })
            },
        )
        .unwrap();
        let f: mlua::Function = lua.load(src).eval().unwrap();
        let body = lua.create_thread(f).unwrap();
        remember_hook(&body);
        (lua, body, hits)
    }

    #[test]
    fn an_armed_body_that_cannot_yield_goes_back_to_the_periodic_hook() {
        // About three million instructions.
        let (lua, body, hits) = hooked_body(
            "return function() local n = 0 for i = 1, 1000000 do n = n + i end return n end",
            false,
            true,
        );
        {
            let _step = Step::begin(&body);
            on_signal(0);
            assert!(ARMED.with(|a| a.load(Ordering::Relaxed)));
            let stopped = crate::lua::resume::resume(&lua, &body, Some(Default::default()));
            assert!(matches!(
                stopped,
                Ok(crate::lua::resume::Stopped::Finished(..))
            ));
        }
        assert!(hits.get() >= 1, "the armed hook fired");
        assert!(
            hits.get() < 2_000,
            "{} hook calls: the count went back to periodic",
            hits.get()
        );
        assert_eq!(hook_mask(&body), 0, "the step's end disarms");
    }

    #[test]
    fn the_watchdog_arms_a_step_that_runs_too_long_and_the_step_end_disarms_it() {
        // Spins until preempted: without the watchdog's signal this never yields.
        let (lua, body, hits) = hooked_body("return function() while true do end end", true, false);
        let started = std::time::Instant::now();
        {
            let _step = Step::begin(&body);
            let stopped = crate::lua::resume::resume(&lua, &body, Some(Default::default()));
            assert!(matches!(stopped, Ok(crate::lua::resume::Stopped::Yielded)));
        }
        assert_eq!(hits.get(), 1);
        assert!(started.elapsed() >= TIME_SLICE);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(hook_mask(&body), 0, "the step's end disarms");
        assert!(!ARMED.with(|a| a.load(Ordering::Relaxed)));
    }
}
