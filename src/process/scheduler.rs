//! Worker threads: each owns a current-thread tokio runtime and a `LocalSet`, so everything it
//! runs (Lua processes, HTTP connections, WebSocket relays) shares one thread and one Lua state
//! without locks. Jobs arrive over a channel; work spawned from a worker stays on it.
//!
//! The workers form two pools. Connection workers take HTTP connections, with their handlers,
//! WebSocket relays and the processes those spawn. Process workers run what is started from
//! outside any worker: the processes of `process.service` entries. A service's timers then fire
//! on time however busy the connections are; a ticker that shared a worker with thousands of
//! relays waited behind all of their writes before it could send the next tick.

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
    /// Workers `0..connection_workers` are the connection pool, the rest the process pool.
    connection_workers: usize,
    next_connection: AtomicUsize,
    next_process: AtomicUsize,
}

/// How many workers each pool has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pools {
    pub connection_workers: usize,
    /// 0: processes started from outside a worker share the connection workers.
    pub process_workers: usize,
}

impl Scheduler {
    pub fn start(pools: Pools) -> Arc<Scheduler> {
        let connection_workers = pools.connection_workers.max(1);
        let count = connection_workers + pools.process_workers;
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            workers.push(tx);
            let handle = std::thread::Builder::new()
                .name(if index < connection_workers {
                    format!("moonwire-conn-{index}")
                } else {
                    format!("moonwire-proc-{}", index - connection_workers)
                })
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
            connection_workers,
            next_connection: AtomicUsize::new(0),
            next_process: AtomicUsize::new(0),
        })
    }

    /// The worker index of the calling thread, if it is a worker.
    pub fn current_worker() -> Option<usize> {
        WORKER_INDEX.with(|w| w.get())
    }

    /// Runs `job` on the calling worker when there is one (keeping talkers together), else on
    /// the next process worker round-robin.
    pub fn submit(&self, job: Job) {
        match Scheduler::current_worker() {
            Some(_) => job(),
            None => {
                let (first, len) = match self.workers.len() - self.connection_workers {
                    0 => (0, self.connection_workers),
                    process_workers => (self.connection_workers, process_workers),
                };
                let i = first + self.next_process.fetch_add(1, Ordering::Relaxed) % len;
                self.submit_to(i, job);
            }
        }
    }

    /// Runs `job` (an HTTP connection) on the next connection worker round-robin.
    pub fn submit_connection(&self, job: Job) {
        let i = self.next_connection.fetch_add(1, Ordering::Relaxed) % self.connection_workers;
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

    fn one_worker_each() -> Arc<Scheduler> {
        Scheduler::start(Pools {
            connection_workers: 1,
            process_workers: 1,
        })
    }

    #[test]
    fn jobs_run_on_workers_and_survive_a_panic() {
        let s = one_worker_each();
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

    /// Where `submit` (from outside a worker) and `submit_connection` put their jobs, in order.
    fn placements(pools: Pools, submit: usize, connections: usize) -> (Vec<usize>, Vec<usize>) {
        let s = Scheduler::start(pools);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..submit {
            let tx = tx.clone();
            s.submit(Box::new(move || {
                tx.send((false, Scheduler::current_worker())).unwrap()
            }));
        }
        for _ in 0..connections {
            let tx = tx.clone();
            s.submit_connection(Box::new(move || {
                tx.send((true, Scheduler::current_worker())).unwrap()
            }));
        }
        drop(tx);
        let (mut procs, mut conns) = (Vec::new(), Vec::new());
        for (connection, worker) in rx {
            let worker = worker.expect("ran on a worker");
            if connection {
                conns.push(worker)
            } else {
                procs.push(worker)
            }
        }
        procs.sort_unstable();
        conns.sort_unstable();
        (procs, conns)
    }

    #[test]
    fn connections_and_started_processes_use_their_pools() {
        // (connection workers, process workers) → where 4 started processes and 4
        // connections run; without process workers, processes share the connection workers.
        let cases = [
            ((2, 2), [2, 2, 3, 3], [0, 0, 1, 1]),
            ((2, 0), [0, 0, 1, 1], [0, 0, 1, 1]),
        ];
        for ((connection_workers, process_workers), procs, conns) in cases {
            let pools = Pools {
                connection_workers,
                process_workers,
            };
            assert_eq!(
                placements(pools, 4, 4),
                (procs.to_vec(), conns.to_vec()),
                "{pools:?}"
            );
        }
    }

    #[test]
    fn a_job_submitted_from_a_worker_runs_on_that_worker() {
        let s = one_worker_each();
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = s.clone();
        s.submit_connection(Box::new(move || {
            inner.submit(Box::new(move || {
                tx.send(Scheduler::current_worker()).unwrap()
            }));
        }));
        assert_eq!(rx.recv().unwrap(), Some(0));
    }
}
