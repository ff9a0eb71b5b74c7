//! Process-local Go-style channels (§4) and `channel.select`, plus the timer-fed channels behind
//! `time.after/timer/ticker`. The inbox and events channels are ordinary channels that the
//! process's mailbox pump fills.

use crate::lua::context::{self, ProcCtx};
use crate::lua::wait;
use crate::process::pid::{Event, Message};
use mlua::{AnyUserData, Lua, UserData, UserDataFields, UserDataMethods, UserDataRef};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime};

/// A script's value in a channel. Values that are mlua references (strings, tables, functions,
/// userdata) are kept in the Lua registry instead, so values buffered in channels cannot
/// exhaust mlua's reference stack; the others are held as they are.
pub enum LuaItem {
    Plain(mlua::Value),
    Stored(mlua::RegistryKey),
}

/// What a channel buffers. Mailbox items stay owned until a receiver turns them into Lua values.
pub enum Item {
    /// A script's value.
    Lua(LuaItem),
    Value(crate::process::value::Value),
    Message(Message),
    Event(Event),
    Time(SystemTime),
}

#[derive(Default)]
struct State {
    buf: VecDeque<Item>,
    closed: bool,
    /// Count of items taken, so an unbuffered sender knows its handoff happened.
    taken: u64,
    pushed: u64,
    /// The first waiter has its own slot: a channel almost always has one (its process), and
    /// waiting then allocates nothing.
    waker: Option<Waker>,
    more_wakers: Vec<Waker>,
    /// Receivers parked on this channel (`receive` or a select's receive case): an unbuffered
    /// channel's select send case is ready only when one is waiting for the value.
    receivers: usize,
}

impl State {
    fn take_wakers(&mut self) -> (Option<Waker>, Vec<Waker>) {
        let more = if self.more_wakers.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut self.more_wakers)
        };
        (self.waker.take(), more)
    }
}

/// A buffer whose capacity is above this when it runs empty is freed, so an idle process
/// does not keep the buffer of a past burst.
const IDLE_KEEP: usize = 8;

pub struct ChanCore {
    /// `None` = unbounded (mailbox-fed); `Some(0)` = rendezvous.
    capacity: Option<usize>,
    state: RefCell<State>,
}

impl ChanCore {
    pub fn new(capacity: Option<usize>) -> Rc<ChanCore> {
        Rc::new(ChanCore {
            capacity,
            state: RefCell::new(State::default()),
        })
    }

    fn wake_all(&self) {
        self.wake_except(None);
    }

    /// Wakes every waiter but `current` (the task polling now, which looks at the channel
    /// again before it can wait): waking it would only cost it a spurious extra poll.
    fn wake_except(&self, current: Option<&Waker>) {
        let (first, more) = self.state.borrow_mut().take_wakers();
        for w in first.into_iter().chain(more) {
            if !current.is_some_and(|c| c.will_wake(&w)) {
                w.wake();
            }
        }
    }

    fn register(&self, waker: &Waker) {
        let mut st = self.state.borrow_mut();
        match &st.waker {
            None => st.waker = Some(waker.clone()),
            Some(w) if w.will_wake(waker) => {}
            Some(_) => {
                if !st.more_wakers.iter().any(|w| w.will_wake(waker)) {
                    st.more_wakers.push(waker.clone());
                }
            }
        }
    }

    /// Unconditional push (mailbox pump, timers). Returns the item back if closed.
    pub fn push(&self, item: Item) {
        self.push_from(item, None);
    }

    /// `push` by the task `current` itself (the mailbox pump, which runs right before that task
    /// polls its coroutine): other waiters are woken, `current` is not.
    pub fn push_from(&self, item: Item, current: Option<&Waker>) {
        {
            let mut st = self.state.borrow_mut();
            if st.closed {
                return;
            }
            st.buf.push_back(item);
            st.pushed += 1;
        }
        self.wake_except(current);
    }

    /// Folds an OUTDATED event into one still undelivered (union, no duplicates), or queues
    /// it (§10.2).
    pub fn push_outdated(&self, mut sources: Vec<String>) {
        sources.dedup();
        {
            let mut st = self.state.borrow_mut();
            let queued = st.buf.iter_mut().rev().find_map(|item| match item {
                Item::Event(Event::Outdated { sources }) => Some(sources),
                _ => None,
            });
            if let Some(queued) = queued {
                for s in sources {
                    if !queued.contains(&s) {
                        queued.push(s);
                    }
                }
                return;
            }
        }
        self.push(Item::Event(Event::Outdated { sources }));
    }

    /// Push only if the buffer has room (tickers drop unread ticks).
    pub fn offer(&self, item: Item) -> bool {
        let full = {
            let st = self.state.borrow();
            st.closed || self.capacity.is_some_and(|c| st.buf.len() >= c.max(1))
        };
        if !full {
            self.push(item);
        }
        !full
    }

    fn can_send(&self) -> bool {
        let st = self.state.borrow();
        match self.capacity {
            None => true,
            Some(c) => st.buf.len() < c.max(1),
        }
    }

    /// Whether a select's send case may complete now. Unbuffered: only into the hands of a
    /// waiting receiver (otherwise the value would sit in the channel as if it had a buffer).
    fn select_can_send(&self) -> bool {
        match self.capacity {
            Some(0) => {
                let st = self.state.borrow();
                st.buf.len() < st.receivers
            }
            _ => self.can_send(),
        }
    }

    /// `Some(Some(item))` ready, `Some(None)` closed and drained, `None` would block.
    fn try_take(&self) -> Option<Option<Item>> {
        let mut st = self.state.borrow_mut();
        match st.buf.pop_front() {
            Some(item) => {
                st.taken += 1;
                if st.buf.is_empty() && st.buf.capacity() > IDLE_KEEP {
                    st.buf = VecDeque::new();
                }
                drop(st);
                self.wake_all();
                Some(Some(item))
            }
            None if st.closed => Some(None),
            None => None,
        }
    }

    pub fn close(&self) {
        self.state.borrow_mut().closed = true;
        self.wake_all();
    }

    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    pub fn len(&self) -> usize {
        self.state.borrow().buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn send(&self, item: Item) -> Result<(), ()> {
        let ticket = poll_fn(|cx| {
            if self.is_closed() {
                return Poll::Ready(Err(()));
            }
            if self.can_send() {
                let mut st = self.state.borrow_mut();
                st.buf
                    .push_back(Item::Lua(LuaItem::Plain(mlua::Value::Nil)));
                st.pushed += 1;
                return Poll::Ready(Ok(st.pushed));
            }
            self.register(cx.waker());
            Poll::Pending
        })
        .await?;
        // Replace the placeholder with the real item (no await between, so no one saw it).
        if let Some(slot) = self.state.borrow_mut().buf.back_mut() {
            *slot = item;
        }
        self.wake_all();
        if self.capacity == Some(0) {
            // Rendezvous: wait until a receiver has taken our item (or the channel closed).
            poll_fn(|cx| {
                let st = self.state.borrow();
                if st.taken >= ticket {
                    return Poll::Ready(Ok(()));
                }
                if st.closed {
                    return Poll::Ready(Err(()));
                }
                drop(st);
                self.register(cx.waker());
                Poll::Pending
            })
            .await
        } else {
            Ok(())
        }
    }

    pub async fn receive(&self) -> Option<Item> {
        let mut parked = Parked::new(self);
        poll_fn(|cx| match self.try_take() {
            Some(r) => Poll::Ready(r),
            None => {
                parked.park();
                self.register(cx.waker());
                Poll::Pending
            }
        })
        .await
    }
}

/// Counts a waiting receiver on a channel while it is parked (until dropped).
struct Parked<'a> {
    core: &'a ChanCore,
    parked: bool,
}

impl<'a> Parked<'a> {
    fn new(core: &'a ChanCore) -> Self {
        Parked {
            core,
            parked: false,
        }
    }

    fn park(&mut self) {
        if !self.parked {
            self.parked = true;
            self.core.state.borrow_mut().receivers += 1;
            // A select waiting to hand a value to an unbuffered channel can go ahead now.
            self.core.wake_all();
        }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if self.parked {
            let mut st = self.core.state.borrow_mut();
            st.receivers = st.receivers.saturating_sub(1);
        }
    }
}

/// The Lua-visible channel object.
#[derive(Clone)]
pub struct Channel(pub Rc<ChanCore>);

/// A `case_send` / `case_receive` for `channel.select`.
pub struct Case {
    channel: AnyUserData,
    core: Rc<ChanCore>,
    send: Option<mlua::Value>,
}

impl UserData for Case {}

impl UserData for Channel {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field("receive", ReceiveFn);
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("send", |lua, this, v: mlua::Value| async move {
            this.0
                .send(lua_item(&lua, v)?)
                .await
                .map_err(|_| mlua::Error::runtime("send on closed channel"))?;
            Ok(true)
        });
        methods.add_method("close", |_, this, ()| {
            this.0.close();
            Ok(())
        });
        methods.add_function("case_send", |_, (ud, v): (AnyUserData, mlua::Value)| {
            let core = ud.borrow::<Channel>()?.0.clone();
            Ok(Case {
                channel: ud,
                core,
                send: Some(v),
            })
        });
        methods.add_function("case_receive", |_, ud: AnyUserData| {
            let core = ud.borrow::<Channel>()?.0.clone();
            Ok(Case {
                channel: ud,
                core,
                send: None,
            })
        });
        methods.add_method("len", |_, this, ()| Ok(this.0.len()));
    }
}

/// A script's value as a channel item.
fn lua_item(lua: &Lua, v: mlua::Value) -> mlua::Result<Item> {
    use mlua::Value::*;
    Ok(Item::Lua(match v {
        Nil | Boolean(_) | Integer(_) | Number(_) | LightUserData(_) => LuaItem::Plain(v),
        v => LuaItem::Stored(lua.create_registry_value(v)?),
    }))
}

/// Converts a buffered item into what scripts receive.
pub fn item_to_lua(lua: &Lua, item: Item) -> mlua::Result<mlua::Value> {
    match item {
        Item::Lua(LuaItem::Plain(v)) => Ok(v),
        Item::Lua(LuaItem::Stored(key)) => {
            let v = lua.registry_value(&key)?;
            lua.remove_registry_value(key)?;
            Ok(v)
        }
        Item::Value(v) => crate::lua::convert::to_lua(lua, &v),
        Item::Message(m) => crate::lua::message::to_lua(lua, m),
        Item::Event(e) => crate::lua::modules::process::event_to_lua(lua, &e),
        Item::Time(t) => crate::lua::modules::time::time_value(
            lua,
            crate::lua::modules::time::LuaTime::from_system(t),
        ),
    }
}

/// `ch:receive()` as a synchronous wait (see `wait.rs`; a process's own channels wait in
/// `fast_receive::receive`), built once per Lua state when the `Channel` type is registered.
struct ReceiveFn;

impl mlua::IntoLua for ReceiveFn {
    fn into_lua(self, lua: &Lua) -> mlua::Result<mlua::Value> {
        let try_fn = crate::lua::fast_receive::create(lua, lua.create_function(try_receive)?)?;
        let slow = lua.create_async_function(|lua, ud: AnyUserData| async move {
            let core = ud.borrow::<Channel>()?.0.clone();
            match core.receive().await {
                Some(item) => Ok((item_to_lua(&lua, item)?, true)),
                None => Ok((mlua::Value::Nil, false)),
            }
        })?;
        let wait_loop = wait::wait_loop(lua, try_fn, slow)?;
        Ok(mlua::Value::Function(
            crate::lua::fast_receive::receive_function(lua, wait_loop)?,
        ))
    }
}

/// What one receive try found.
pub(crate) enum Tried {
    Item(Item),
    Closed,
    /// Nothing yet; the polling task's waker is registered.
    Wait,
    /// Take the async path (no process poll to wake, or a rendezvous receiver).
    Slow,
}

pub(crate) fn try_receive_from(core: &ChanCore) -> Tried {
    // A rendezvous receiver must be counted while it waits (see `Parked`): async path.
    if core.capacity == Some(0) {
        return Tried::Slow;
    }
    match core.try_take() {
        Some(Some(item)) => Tried::Item(item),
        Some(None) => Tried::Closed,
        None if wait::arm(|w| core.register(w)) => Tried::Wait,
        None => Tried::Slow,
    }
}

fn try_receive(lua: &Lua, ch: UserDataRef<Channel>) -> mlua::Result<(i64, mlua::Value, bool)> {
    Ok(match try_receive_from(&ch.0) {
        Tried::Item(item) => (wait::TWO, item_to_lua(lua, item)?, true),
        Tried::Closed => (wait::TWO, mlua::Value::Nil, false),
        Tried::Wait => (wait::WAIT, mlua::Value::Nil, false),
        Tried::Slow => (wait::SLOW, mlua::Value::Nil, false),
    })
}

/// One case of a `channel.select`: the channel object (for `result.channel`), its core, and
/// the value of a send case.
type SelectCase = (AnyUserData, Rc<ChanCore>, Option<mlua::Value>);

/// A select's cases and whether it has a `default`.
fn select_cases(cases: &mlua::Table) -> mlua::Result<(Vec<SelectCase>, bool)> {
    let has_default: bool = cases.get::<Option<bool>>("default")?.unwrap_or(false);
    let mut list = Vec::new();
    for v in cases.sequence_values::<AnyUserData>() {
        let ud = v?;
        let case = ud.borrow::<Case>()?;
        list.push((case.channel.clone(), case.core.clone(), case.send.clone()));
    }
    if list.is_empty() && !has_default {
        return Err(mlua::Error::runtime("channel.select: no cases"));
    }
    Ok((list, has_default))
}

/// What a select found ready.
enum Ready {
    Default,
    /// A receive case's item, `None` when its channel is closed and drained.
    Received(usize, Option<Item>),
    /// A send case that may complete (or whose channel is closed).
    Send(usize),
}

/// The first ready case, looked at from a random start so no case starves the others.
fn ready_case(list: &[SelectCase], has_default: bool) -> Option<Ready> {
    let start = if list.len() > 1 {
        rand::random::<usize>() % list.len()
    } else {
        0
    };
    for i in 0..list.len() {
        let idx = (start + i) % list.len();
        let (_, core, send) = &list[idx];
        match send {
            Some(_) => {
                if core.is_closed() || core.select_can_send() {
                    return Some(Ready::Send(idx));
                }
            }
            None => {
                if let Some(r) = core.try_take() {
                    return Some(Ready::Received(idx, r));
                }
            }
        }
    }
    has_default.then_some(Ready::Default)
}

/// The table `channel.select` returns for `ready`; completes a send case.
fn select_result(lua: &Lua, list: &[SelectCase], ready: Ready) -> mlua::Result<mlua::Table> {
    let result = lua.create_table()?;
    match ready {
        Ready::Default => {
            result.set("default", true)?;
            result.set("ok", true)?;
        }
        Ready::Received(idx, received) => {
            result.set("channel", list[idx].0.clone())?;
            match received {
                Some(item) => {
                    result.set("value", item_to_lua(lua, item)?)?;
                    result.set("ok", true)?;
                }
                None => result.set("ok", false)?,
            }
        }
        Ready::Send(idx) => {
            let (ud, core, send) = &list[idx];
            result.set("channel", ud.clone())?;
            if core.is_closed() {
                return Err(mlua::Error::runtime("send on closed channel"));
            }
            core.push(lua_item(lua, send.clone().unwrap_or(mlua::Value::Nil))?);
            result.set("ok", true)?;
        }
    }
    Ok(result)
}

/// `channel.select` as a synchronous wait (see `wait.rs`).
fn try_select(lua: &Lua, cases: mlua::Table) -> mlua::Result<(i64, mlua::Value)> {
    let (list, has_default) = select_cases(&cases)?;
    // Rendezvous channels count waiting receivers and hand values only to them: async path.
    if list.iter().any(|(_, core, _)| core.capacity == Some(0)) {
        return Ok((wait::SLOW, mlua::Value::Nil));
    }
    if let Some(ready) = ready_case(&list, has_default) {
        return Ok((
            wait::ONE,
            mlua::Value::Table(select_result(lua, &list, ready)?),
        ));
    }
    let armed = wait::arm(|w| {
        for (_, core, _) in &list {
            core.register(w);
        }
    });
    Ok((
        if armed { wait::WAIT } else { wait::SLOW },
        mlua::Value::Nil,
    ))
}

async fn select(lua: Lua, cases: mlua::Table) -> mlua::Result<mlua::Table> {
    let (list, has_default) = select_cases(&cases)?;
    // Receive cases count as waiting receivers while the select is parked.
    let mut parked: Vec<Option<Parked>> = list
        .iter()
        .map(|(_, core, send)| send.is_none().then(|| Parked::new(core)))
        .collect();
    let ready = poll_fn(|cx| {
        if let Some(ready) = ready_case(&list, has_default) {
            return Poll::Ready(ready);
        }
        for (p, (_, core, _)) in parked.iter_mut().zip(&list) {
            if let Some(p) = p {
                p.park();
            }
            core.register(cx.waker());
        }
        Poll::Pending
    })
    .await;
    drop(parked);
    select_result(&lua, &list, ready)
}

/// The `channel` global.
pub fn register(lua: &Lua, globals: &mlua::Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "new",
        lua.create_function(|_, size: Option<i64>| {
            let size = size.unwrap_or(0);
            if size < 0 {
                return Err(mlua::Error::runtime("channel.new: negative size"));
            }
            Ok(Channel(ChanCore::new(Some(size as usize))))
        })?,
    )?;
    t.set(
        "select",
        wait::wait_loop(
            lua,
            lua.create_function(try_select)?,
            lua.create_async_function(select)?,
        )?,
    )?;
    globals.set("channel", crate::lua::sandbox::read_only(lua, t)?)?;
    Ok(())
}

/// Timer-backed channels for the `time` module: `sleep`, `after`, `timer`, `ticker`.
pub fn register_time_async(lua: &Lua, time: &mlua::Table) -> mlua::Result<()> {
    time.set(
        "sleep",
        lua.create_async_function(|lua, d: mlua::Value| async move {
            let d = match crate::lua::modules::time::duration_arg(&d) {
                Ok(d) => d,
                Err(e) => {
                    return crate::lua::errors::fail(
                        &lua,
                        crate::process::value::ErrorKind::Invalid,
                        e,
                    )
                }
            };
            tokio::time::sleep(d).await;
            crate::lua::errors::ok(&lua, true)
        })?,
    )?;
    time.set(
        "after",
        lua.create_function(|lua, d: mlua::Value| {
            with_positive_duration(lua, &d, |d| {
                let core = ChanCore::new(Some(1));
                spawn_timer(core.clone(), d, None);
                Channel(core)
            })
        })?,
    )?;
    time.set(
        "timer",
        lua.create_function(|lua, d: mlua::Value| new_timer(lua, &d, false))?,
    )?;
    time.set(
        "ticker",
        lua.create_function(|lua, d: mlua::Value| new_timer(lua, &d, true))?,
    )?;
    Ok(())
}

/// `time.timer(d)` (one Time after `d`) or `time.ticker(d)` (one per `d`): Timer, err.
fn new_timer(
    lua: &Lua,
    d: &mlua::Value,
    periodic: bool,
) -> mlua::Result<(mlua::Value, mlua::Value)> {
    with_positive_duration(lua, d, |d| {
        let core = ChanCore::new(Some(1));
        let task = spawn_timer(core.clone(), d, periodic.then_some(d));
        Timer {
            core,
            periodic,
            task: RefCell::new(Some(task)),
        }
    })
}

/// `make(d)` for a positive duration `d`, else nil and an INVALID error (§6.4).
fn with_positive_duration<T: mlua::IntoLua>(
    lua: &Lua,
    d: &mlua::Value,
    make: impl FnOnce(Duration) -> T,
) -> mlua::Result<(mlua::Value, mlua::Value)> {
    match positive_duration(d) {
        Ok(d) => crate::lua::errors::ok(lua, make(d)),
        Err(e) => crate::lua::errors::fail(
            lua,
            crate::process::value::ErrorKind::Invalid,
            e.to_string(),
        ),
    }
}

fn positive_duration(v: &mlua::Value) -> mlua::Result<Duration> {
    let d = crate::lua::modules::time::duration_arg(v).map_err(mlua::Error::runtime)?;
    if d.is_zero() {
        return Err(mlua::Error::runtime("duration must be positive"));
    }
    Ok(d)
}

/// Spawns the timer task on this worker; it dies with the owning process.
fn spawn_timer(
    core: Rc<ChanCore>,
    first: Duration,
    period: Option<Duration>,
) -> tokio::task::AbortHandle {
    let weak = Rc::downgrade(&core);
    let handle = tokio::task::spawn_local(async move {
        match period {
            None => {
                tokio::time::sleep(first).await;
                if let Some(c) = weak.upgrade() {
                    c.offer(Item::Time(SystemTime::now()));
                }
            }
            Some(p) => {
                let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + first, p);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    interval.tick().await;
                    match weak.upgrade() {
                        Some(c) => {
                            c.offer(Item::Time(SystemTime::now()));
                        }
                        None => break,
                    }
                }
            }
        }
    })
    .abort_handle();
    context::with_current(|ctx: &ProcCtx| ctx.own_task(handle.clone()));
    handle
}

/// `time.timer` / `time.ticker` objects.
pub struct Timer {
    core: Rc<ChanCore>,
    /// A ticker: `reset` changes its period and it keeps ticking.
    periodic: bool,
    task: RefCell<Option<tokio::task::AbortHandle>>,
}

impl UserData for Timer {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("response", |_, this, ()| Ok(Channel(this.core.clone())));
        methods.add_method("channel", |_, this, ()| Ok(Channel(this.core.clone())));
        methods.add_method("stop", |_, this, ()| {
            let was_running = this
                .task
                .borrow_mut()
                .take()
                .map(|t| {
                    let running = !t.is_finished();
                    t.abort();
                    running
                })
                .unwrap_or(false);
            Ok(was_running)
        });
        methods.add_method("reset", |_, this, d: mlua::Value| {
            let d = positive_duration(&d)?;
            if let Some(t) = this.task.borrow_mut().take() {
                t.abort();
            }
            let period = this.periodic.then_some(d);
            *this.task.borrow_mut() = Some(spawn_timer(this.core.clone(), d, period));
            Ok(true)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn unbuffered_select_send_needs_a_waiting_receiver() {
        let ch = ChanCore::new(Some(0));
        assert!(!ch.select_can_send(), "nobody waiting");
        let mut cx = std::task::Context::from_waker(Waker::noop());
        let mut recv = Box::pin(ch.receive());
        assert!(recv.as_mut().poll(&mut cx).is_pending());
        assert!(ch.select_can_send(), "a receiver is parked");
        ch.push(Item::Lua(LuaItem::Plain(mlua::Value::Integer(1))));
        assert!(!ch.select_can_send(), "its value is already on the way");
        assert!(matches!(
            recv.as_mut().poll(&mut cx),
            Poll::Ready(Some(Item::Lua(LuaItem::Plain(mlua::Value::Integer(1)))))
        ));
        drop(recv);
        assert!(!ch.select_can_send(), "the receiver is gone");
        // A dropped, still-parked receiver is no longer counted either.
        let mut gone = Box::pin(ch.receive());
        assert!(gone.as_mut().poll(&mut cx).is_pending());
        drop(gone);
        assert!(!ch.select_can_send());
        // Buffered channels are unaffected.
        let buffered = ChanCore::new(Some(1));
        assert!(buffered.select_can_send());
    }
}
