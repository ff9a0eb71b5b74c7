//! A process mailbox: a FIFO of signals fed from any thread, drained by its owner.

use crate::process::pid::Signal;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::Waker;

/// A queue whose capacity is above this when its owner goes idle is freed, so an idle
/// process does not keep the buffer of a past burst.
const IDLE_KEEP: usize = 8;

#[derive(Default)]
pub struct Mailbox {
    inner: Mutex<Inner>,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The owner has exited.
    Closed,
    /// A bounded mailbox is full; the message was dropped and the owner told.
    Full,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Signal>,
    /// The waiting owner task. Almost always the only waiter, so it has its own slot and a
    /// push takes it without allocating.
    waker: Option<Waker>,
    /// Further waiters (a process's `coroutine.spawn` tasks).
    more_wakers: Vec<Waker>,
    /// Set by `terminate` or a failed link: the owner must stop with this error.
    kill: Option<String>,
    closed: bool,
    /// Messages beyond this many queued are dropped (0 = unbounded). Events always pass.
    limit: usize,
    overflowed: bool,
}

impl Inner {
    fn take_wakers(&mut self) -> (Option<Waker>, Vec<Waker>) {
        let more = if self.more_wakers.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut self.more_wakers)
        };
        (self.waker.take(), more)
    }
}

fn wake((first, more): (Option<Waker>, Vec<Waker>)) {
    if let Some(w) = first {
        w.wake();
    }
    more.into_iter().for_each(Waker::wake);
}

impl Mailbox {
    /// A mailbox that holds at most `limit` messages (a WebSocket client's outbound queue).
    pub fn bounded(limit: usize) -> Mailbox {
        let mb = Mailbox::default();
        mb.inner.lock().expect("mailbox lock").limit = limit;
        mb
    }

    /// Queues a signal and wakes the owner. Returns false once the owner has exited or a
    /// bounded mailbox overflowed.
    pub fn push(&self, signal: Signal) -> bool {
        self.try_push(signal).is_ok()
    }

    pub fn try_push(&self, signal: Signal) -> Result<(), PushError> {
        let (wakers, result) = {
            let mut inner = self.inner.lock().expect("mailbox lock");
            if inner.closed {
                return Err(PushError::Closed);
            }
            if inner.limit > 0
                && matches!(signal, Signal::Message(_))
                && inner.queue.len() >= inner.limit
            {
                let first = !inner.overflowed;
                inner.overflowed = true;
                if !first {
                    return Err(PushError::Full);
                }
                (inner.take_wakers(), Err(PushError::Full))
            } else {
                inner.queue.push_back(signal);
                (inner.take_wakers(), Ok(()))
            }
        };
        wake(wakers);
        result
    }

    /// Whether a bounded mailbox has dropped messages since it was created.
    pub fn overflowed(&self) -> bool {
        self.inner.lock().expect("mailbox lock").overflowed
    }

    /// Asks the owner to stop with `reason` (first request wins).
    pub fn kill(&self, reason: impl Into<String>) {
        let wakers = {
            let mut inner = self.inner.lock().expect("mailbox lock");
            if inner.closed {
                return;
            }
            inner.kill.get_or_insert_with(|| reason.into());
            inner.take_wakers()
        };
        wake(wakers);
    }

    pub fn kill_reason(&self) -> Option<String> {
        self.inner.lock().expect("mailbox lock").kill.clone()
    }

    /// Moves every queued signal out, in order.
    pub fn drain(&self, out: &mut impl Extend<Signal>) {
        let mut inner = self.inner.lock().expect("mailbox lock");
        out.extend(inner.queue.drain(..));
    }

    /// The owner's pump: moves every queued signal to the back of `out` and returns the kill
    /// reason, if any, under one lock (instead of a lock per signal).
    pub fn take_all(&self, out: &mut VecDeque<Signal>) -> Option<String> {
        let mut inner = self.inner.lock().expect("mailbox lock");
        if !inner.queue.is_empty() {
            if out.is_empty() {
                // Hand the whole buffer over; the mailbox keeps `out`'s spare capacity.
                std::mem::swap(&mut inner.queue, out);
            } else {
                out.extend(inner.queue.drain(..));
            }
        }
        inner.kill.clone()
    }

    pub fn pop(&self) -> Option<Signal> {
        self.inner.lock().expect("mailbox lock").queue.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().expect("mailbox lock").queue.is_empty()
    }

    /// Registers a waker, unless something is already queued (then returns false: poll again).
    pub fn register(&self, waker: &Waker) -> bool {
        let mut inner = self.inner.lock().expect("mailbox lock");
        if !inner.queue.is_empty() || inner.kill.is_some() || inner.overflowed {
            return false;
        }
        if inner.queue.capacity() > IDLE_KEEP {
            inner.queue = VecDeque::new();
        }
        match &inner.waker {
            None => inner.waker = Some(waker.clone()),
            Some(w) if w.will_wake(waker) => {}
            Some(_) => {
                if !inner.more_wakers.iter().any(|w| w.will_wake(waker)) {
                    inner.more_wakers.push(waker.clone());
                }
            }
        }
        true
    }

    /// The owner has exited: later pushes are dropped; returns what was still queued.
    pub fn close(&self) -> VecDeque<Signal> {
        let mut inner = self.inner.lock().expect("mailbox lock");
        inner.closed = true;
        inner.waker = None;
        inner.more_wakers = Vec::new();
        std::mem::take(&mut inner.queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::pid::{Event, Signal};

    fn cancel() -> Signal {
        Signal::Event(Event::Cancel {
            from: None,
            reason: String::new(),
        })
    }

    #[test]
    fn closed_mailbox_drops_pushes() {
        let mb = Mailbox::default();
        assert!(mb.push(cancel()));
        assert_eq!(mb.close().len(), 1);
        assert!(!mb.push(cancel()));
    }

    #[test]
    fn bounded_mailbox_drops_messages_but_not_events() {
        let mb = Mailbox::bounded(1);
        let msg = || {
            Signal::Message(crate::process::pid::Message {
                from: None,
                topic: std::sync::Arc::from("t"),
                payloads: vec![],
            })
        };
        assert!(mb.push(msg()));
        assert_eq!(mb.try_push(msg()), Err(PushError::Full));
        assert!(mb.overflowed());
        assert!(mb.push(cancel()));
    }

    #[test]
    fn first_kill_reason_wins() {
        let mb = Mailbox::default();
        mb.kill("terminated");
        mb.kill("other");
        assert_eq!(mb.kill_reason().as_deref(), Some("terminated"));
    }

    #[test]
    fn take_all_moves_everything_in_order_and_reports_kill() {
        let mb = Mailbox::default();
        for i in 0..3 {
            mb.push(Signal::Event(Event::Cancel {
                from: None,
                reason: i.to_string(),
            }));
        }
        let mut out = VecDeque::new();
        assert_eq!(mb.take_all(&mut out), None);
        mb.push(cancel());
        mb.kill("stop");
        assert_eq!(mb.take_all(&mut out).as_deref(), Some("stop"));
        let reasons: Vec<String> = out
            .into_iter()
            .map(|s| match s {
                Signal::Event(Event::Cancel { reason, .. }) => reason,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(reasons, ["0", "1", "2", ""]);
        assert!(mb.is_empty());
    }

    #[test]
    fn every_registered_waker_is_woken() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let a = Arc::new(Count(AtomicUsize::new(0)));
        let b = Arc::new(Count(AtomicUsize::new(0)));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let mb = Mailbox::default();
        assert!(mb.register(&wa));
        assert!(mb.register(&wb));
        assert!(mb.register(&wa));
        mb.push(cancel());
        assert_eq!(
            (a.0.load(Ordering::Relaxed), b.0.load(Ordering::Relaxed)),
            (1, 1)
        );
        assert!(!mb.register(&wa), "something is queued");
    }
}
