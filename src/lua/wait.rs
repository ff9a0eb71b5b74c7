//! Synchronous waits. A binding that finds nothing ready registers the polling task's waker
//! where it would wait and yields the process coroutine with mlua's pending marker; when the
//! task is woken the coroutine is resumed and the binding tries again.
//!
//! Why: an mlua async function costs a boxed future, a userdata and a Lua poll loop per call,
//! even when the value is already there. `receive` and `select` are the hottest calls a process
//! makes, so they try synchronously first and only pay for a yield when they really wait. A
//! yield with the pending marker is exactly what an mlua async call does when it waits, so the
//! scheduler (`resume.rs`, `worker::STEP`) and scripts' own coroutines (`coroutine.rs`) treat
//! both alike. The receive of a process's own inbox and events channels runs the same loop in C
//! (`fast_receive::receive`) and hands every other case to this one.

use crate::lua::context;
use mlua::{FromLuaMulti, Function, Lua, Table, UserData, UserDataRef};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// `try` found nothing ready and armed a wake-up: yield and try again when resumed.
pub const WAIT: i64 = 0;
/// Done: the wait returns `a`.
pub const ONE: i64 = 1;
/// Done: the wait returns `a, b`.
pub const TWO: i64 = 2;
/// Cannot wait synchronously here (no process poll to wake, or a rendezvous that must count
/// its waiting receiver): call the async fallback with the same arguments.
pub const SLOW: i64 = 3;

const LOOP: &str = r#"
local try, slow, yield, PENDING = ...
return function(...)
    local status, a, b = try(...)
    while status == 0 do
        if yield(PENDING) ~= nil then
            -- Resumed with a value: mlua's terminate signal (the task was dropped while
            -- waiting). Stay suspended; the script never runs again.
            while true do yield() end
        end
        status, a, b = try(...)
    end
    if status == 1 then return a end
    if status == 2 then return a, b end
    return slow(...)
end
"#;

/// A Lua function that calls `try(...)` until it is done, yielding the process while `try`
/// says `WAIT`, and falls back to `slow(...)` on `SLOW`. `try` returns `(status, a, b)`.
pub fn wait_loop(lua: &Lua, try_fn: Function, slow: Function) -> mlua::Result<Function> {
    let coroutine: Table = lua.globals().raw_get("coroutine")?;
    lua.load(LOOP).set_name("=wait").call((
        try_fn,
        slow,
        coroutine.raw_get::<Function>("yield")?,
        mlua::Value::LightUserData(Lua::poll_pending()),
    ))
}

/// A binding's two results.
pub type CallResult = mlua::Result<(mlua::Value, mlua::Value)>;

type CallFuture = Pin<Box<dyn Future<Output = CallResult>>>;

/// One call's future between its polls, owned by the Lua stack of the waiting coroutine: a
/// coroutine that is collected while waiting drops it with it.
struct PendingCall(RefCell<Option<CallFuture>>);

impl UserData for PendingCall {}

const FUTURE_LOOP: &str = r#"
local start, poll, slow, yield, PENDING = ...
return function(...)
    local call = start(...)
    if call == nil then return slow(...) end
    while true do
        local done, a, b = poll(call)
        if done then return a, b end
        if yield(PENDING) ~= nil then
            -- mlua's terminate signal: end the call now, and never run the script again.
            poll(call, true)
            while true do yield() end
        end
    end
end
"#;

/// A Lua function that calls `make(args)` for a future and waits for it as `wait_loop` waits
/// (polled with the process poll's waker, yielding the pending marker in between), instead of
/// as an mlua async function: mlua's async call costs a future, a thread and a second async
/// step per wait on top of the binding's own work (a quarter of a `db:query`). Outside a
/// process poll it is that async function.
pub fn future_wait<A, F, Fut>(lua: &Lua, make: F) -> mlua::Result<Function>
where
    A: FromLuaMulti + 'static,
    F: Fn(&Lua, A) -> Fut + Clone + 'static,
    Fut: Future<Output = CallResult> + 'static,
{
    let make_slow = make.clone();
    let start = lua.create_function(move |lua, args: A| {
        if !can_wait() {
            return Ok(None);
        }
        let call: CallFuture = Box::pin(make(lua, args));
        Ok(Some(PendingCall(RefCell::new(Some(call)))))
    })?;
    let slow = lua.create_async_function(move |lua, args: A| make_slow(&lua, args))?;
    let poll = lua.create_function(
        |_,
         (call, stop): (UserDataRef<PendingCall>, Option<bool>)|
         -> mlua::Result<(bool, mlua::Value, mlua::Value)> {
            let mut slot = call.0.borrow_mut();
            if stop == Some(true) {
                slot.take();
                return Ok((true, mlua::Value::Nil, mlua::Value::Nil));
            }
            let Some(future) = slot.as_mut() else {
                return Err(mlua::Error::runtime("the call has already finished"));
            };
            match poll_here(future.as_mut()) {
                Some(Poll::Ready(result)) => {
                    slot.take();
                    let (a, b) = result?;
                    Ok((true, a, b))
                }
                Some(Poll::Pending) => Ok((false, mlua::Value::Nil, mlua::Value::Nil)),
                None => Err(mlua::Error::runtime(
                    "cannot wait here: not inside a process step",
                )),
            }
        },
    )?;
    let coroutine: Table = lua.globals().raw_get("coroutine")?;
    lua.load(FUTURE_LOOP).set_name("=wait").call((
        start,
        poll,
        slow,
        coroutine.raw_get::<Function>("yield")?,
        mlua::Value::LightUserData(Lua::poll_pending()),
    ))
}

/// A userdata field whose value is a `future_wait` function (built once per Lua state when the
/// type is registered), for methods that wait: `obj:name(...)` calls it with `obj` first.
pub struct Waiting<A, F> {
    make: F,
    args: std::marker::PhantomData<fn(A)>,
}

impl<A, F, Fut> Waiting<A, F>
where
    A: FromLuaMulti + 'static,
    F: Fn(&Lua, A) -> Fut + Clone + 'static,
    Fut: Future<Output = CallResult> + 'static,
{
    pub fn new(make: F) -> Self {
        Waiting {
            make,
            args: std::marker::PhantomData,
        }
    }
}

impl<A, F, Fut> mlua::IntoLua for Waiting<A, F>
where
    A: FromLuaMulti + 'static,
    F: Fn(&Lua, A) -> Fut + Clone + 'static,
    Fut: Future<Output = CallResult> + 'static,
{
    fn into_lua(self, lua: &Lua) -> mlua::Result<mlua::Value> {
        future_wait(lua, self.make).map(mlua::Value::Function)
    }
}

/// Whether a synchronous wait can be woken here (inside a process poll).
fn can_wait() -> bool {
    context::with_current(|ctx| ctx.poll_waker.borrow().is_some()).unwrap_or(false)
}

/// Polls `future` with the waker of the task polling the current process; a pending poll arms
/// this poll's wait (the task is woken when the future can go on). `None` outside a process
/// poll.
fn poll_here<T>(future: Pin<&mut (dyn Future<Output = T> + '_)>) -> Option<Poll<T>> {
    // The future runs outside any borrow of the context (it may use the context itself).
    let ctx = context::current()?;
    let waker = ctx.poll_waker.borrow().clone()?;
    let polled = future.poll(&mut Context::from_waker(&waker));
    if polled.is_pending() {
        ctx.wait_armed.set(true);
    }
    Some(polled)
}

/// Hands the waker of the task polling the current process to `register` (each place the
/// wait is waiting on) and notes that this poll's pending yield is armed. `false` outside a
/// process poll: the caller must use its async fallback.
pub fn arm(register: impl FnOnce(&Waker)) -> bool {
    context::with_current(|ctx| {
        let waker = ctx.poll_waker.borrow();
        let Some(waker) = waker.as_ref() else {
            return false;
        };
        register(waker);
        ctx.wait_armed.set(true);
        true
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coroutine in `wait_loop`, whose `try` waits once and is then ready with "value";
    /// the script records what it does after the wait in the global `after`.
    fn waiting_coroutine(lua: &Lua) -> mlua::Thread {
        let tries = lua
            .load(
                r#"
                local n = 0
                return function()
                    n = n + 1
                    if n == 1 then return 0 end
                    return 2, "value", true
                end
                "#,
            )
            .eval::<Function>()
            .unwrap();
        let slow = lua.create_function(|_, ()| Ok("slow")).unwrap();
        let wait = wait_loop(lua, tries, slow).unwrap();
        let body = lua
            .load("local wait = ... return function() after = wait() end")
            .call::<Function>(wait)
            .unwrap();
        lua.create_thread(body).unwrap()
    }

    #[test]
    fn a_wait_resumed_normally_tries_again_and_returns() {
        let lua = Lua::new();
        let co = waiting_coroutine(&lua);
        let first: mlua::Value = co.resume(()).unwrap();
        assert_eq!(first, mlua::Value::LightUserData(Lua::poll_pending()));
        co.resume::<()>(()).unwrap();
        assert_eq!(lua.globals().get::<String>("after").unwrap(), "value");
    }

    #[test]
    fn a_wait_resumed_with_a_terminate_signal_never_runs_the_script_again() {
        let lua = Lua::new();
        let co = waiting_coroutine(&lua);
        co.resume::<mlua::Value>(()).unwrap();
        // Anything resumed with a value is mlua's terminate signal.
        co.resume::<()>("terminate").unwrap();
        co.resume::<()>(()).unwrap();
        assert_eq!(
            co.status(),
            mlua::ThreadStatus::Resumable,
            "stays suspended"
        );
        assert!(
            lua.globals().get::<mlua::Value>("after").unwrap().is_nil(),
            "the script went on after its terminate"
        );
    }
}
