//! Polls a WebSocket connection's read side only when its socket woke the connection task.
//!
//! Why: a fan-out connection wakes once per outbound message. Polling the stream on each of
//! those wake-ups (tokio-tungstenite's waker registrations and a readiness check, with nothing
//! to read) was a measurable share of the relay's cost per delivered message.

use futures_util::task::AtomicWaker;
use futures_util::{Stream, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub struct ReadGate {
    flag: Arc<Flag>,
    /// The waker handed to the stream: sets the flag, then wakes the task.
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for ReadGate {
    fn default() -> Self {
        // Open at first: the stream has never been polled, so nothing would wake it.
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        ReadGate {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }
}

impl ReadGate {
    /// `stream.poll_next` if the socket side woke us since the last pending poll, else pending
    /// (the stream's own waker will open the gate and wake `cx`).
    pub fn poll_next<S: Stream + Unpin>(
        &self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Option<S::Item>> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        match stream.poll_next_unpin(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(item) => {
                // More may be buffered already: look again next time.
                self.flag.woken.store(true, Ordering::Release);
                Poll::Ready(item)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;

    /// Ready with `n` after its waker was woken; counts polls.
    struct Probe {
        polls: Arc<AtomicUsize>,
        waker: Option<Waker>,
        ready: bool,
    }

    impl Stream for Probe {
        type Item = usize;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<usize>> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            if self.ready {
                self.ready = false;
                return Poll::Ready(Some(n));
            }
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn the_stream_is_polled_only_after_it_woke_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut probe = Probe {
            polls: polls.clone(),
            waker: None,
            ready: false,
        };
        let gate = ReadGate::default();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(gate.poll_next(&mut probe, &mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "first poll goes through");
        for _ in 0..5 {
            assert!(gate.poll_next(&mut probe, &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "no wake, no poll");
        probe.ready = true;
        probe.waker.take().unwrap().wake();
        assert_eq!(gate.poll_next(&mut probe, &mut cx), Poll::Ready(Some(2)));
        assert!(gate.poll_next(&mut probe, &mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            3,
            "polled again after an item"
        );
        assert!(gate.poll_next(&mut probe, &mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            3,
            "then quiet until the next wake"
        );
    }
}
