//! A process mailbox: a FIFO of signals fed from any thread, drained by its owner.

use crate::process::pid::Signal;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::Waker;

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
    wakers: Vec<Waker>,
    /// Set by `terminate` or a failed link: the owner must stop with this error.
    kill: Option<String>,
    closed: bool,
    /// Messages beyond this many queued are dropped (0 = unbounded). Events always pass.
    limit: usize,
    overflowed: bool,
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
                (std::mem::take(&mut inner.wakers), Err(PushError::Full))
            } else {
                inner.queue.push_back(signal);
                (std::mem::take(&mut inner.wakers), Ok(()))
            }
        };
        wakers.into_iter().for_each(Waker::wake);
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
            std::mem::take(&mut inner.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    pub fn kill_reason(&self) -> Option<String> {
        self.inner.lock().expect("mailbox lock").kill.clone()
    }

    /// Moves every queued signal out, in order.
    pub fn drain(&self, out: &mut impl Extend<Signal>) {
        let mut inner = self.inner.lock().expect("mailbox lock");
        out.extend(inner.queue.drain(..));
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
        if !inner.wakers.iter().any(|w| w.will_wake(waker)) {
            inner.wakers.push(waker.clone());
        }
        true
    }

    /// The owner has exited: later pushes are dropped; returns what was still queued.
    pub fn close(&self) -> VecDeque<Signal> {
        let mut inner = self.inner.lock().expect("mailbox lock");
        inner.closed = true;
        inner.wakers.clear();
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
}
