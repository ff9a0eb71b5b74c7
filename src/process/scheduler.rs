//! Worker threads: each owns a current-thread tokio runtime and a `LocalSet`, so everything it
//! runs (Lua processes, HTTP connections, WebSocket relays) shares one thread and one Lua state
//! without locks. Jobs arrive over a channel; work spawned from a worker stays on it.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

pub type Job = Box<dyn FnOnce() + Send + 'static>;

thread_local! {
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

pub struct Scheduler {
    workers: Vec<mpsc::UnboundedSender<Job>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    next: AtomicUsize,
}

impl Scheduler {
    pub fn start(count: usize) -> Arc<Scheduler> {
        let count = count.max(1);
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            workers.push(tx);
            let handle = std::thread::Builder::new()
                .name(format!("moonwire-worker-{index}"))
                .spawn(move || {
                    WORKER_INDEX.with(|w| w.set(Some(index)));
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("worker runtime");
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        while let Some(job) = rx.recv().await {
                            // A panicking job must not take the worker (and its processes) down.
                            if let Err(panic) =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                            {
                                tracing::error!(
                                    panic = panic_message(&panic),
                                    "worker job panicked"
                                );
                            }
                        }
                    });
                })
                .expect("spawn worker thread");
            threads.push(handle);
        }
        Arc::new(Scheduler {
            workers,
            threads: std::sync::Mutex::new(threads),
            next: AtomicUsize::new(0),
        })
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The worker index of the calling thread, if it is a worker.
    pub fn current_worker() -> Option<usize> {
        WORKER_INDEX.with(|w| w.get())
    }

    /// Runs `job` on the calling worker when there is one (keeping talkers together), else on
    /// the next worker round-robin.
    pub fn submit(&self, job: Job) {
        match Scheduler::current_worker() {
            Some(_) => job(),
            None => self.submit_round_robin(job),
        }
    }

    pub fn submit_round_robin(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        self.submit_to(i, job);
    }

    pub fn submit_to(&self, index: usize, job: Job) {
        if self.workers[index % self.workers.len()].send(job).is_err() {
            tracing::warn!("worker {index} is gone; job dropped");
        }
    }

    /// Closes the job channels and waits for the workers to finish.
    pub fn shutdown(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        drop(threads);
    }
}

pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_workers_and_survive_a_panic() {
        let s = Scheduler::start(2);
        let (tx, rx) = std::sync::mpsc::channel();
        s.submit_to(0, Box::new(|| panic!("boom")));
        let tx2 = tx.clone();
        s.submit_to(
            0,
            Box::new(move || tx2.send(Scheduler::current_worker()).unwrap()),
        );
        s.submit_to(
            1,
            Box::new(move || tx.send(Scheduler::current_worker()).unwrap()),
        );
        let mut got = [rx.recv().unwrap(), rx.recv().unwrap()];
        got.sort();
        assert_eq!(got, [Some(0), Some(1)]);
    }
}
