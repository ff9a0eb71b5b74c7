//! Worker threads: each owns a current-thread tokio runtime and a `LocalSet`, so everything it
//! runs (Lua processes, HTTP connections, WebSocket relays) shares one thread and one Lua state
//! without locks. Jobs arrive over a channel; work spawned from a worker stays on it.
//!
//! The workers form two pools. Connection workers take HTTP connections, with their handlers,
//! WebSocket relays and the processes those spawn. Process workers run what is started from
//! outside any worker: the processes of `process.service` entries. A service's timers then fire
//! on time however busy the connections are; a ticker that shared a worker with thousands of
//! relays waited behind all of their writes before it could send the next tick.
//!
//! Both pools are resized live on reload (`resize`): work never moves between workers, so a
//! retired worker only stops taking new work and ends with the last thing it runs.
//!
//! A process is bound to its worker's Lua state once it runs, but not before: a process worker
//! that spawns faster than it can start what it spawned hands new processes to the least
//! loaded worker of its pool (`place_spawn`), as an Erlang scheduler's idle neighbour steals
//! runnable processes. A single spawn, or a few, still starts beside its spawner.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

pub type Job = Box<dyn FnOnce() + Send + 'static>;

thread_local! {
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
    /// Set by the last job a retired worker receives: it then finishes what it runs and ends.
    static RETIRED: Cell<bool> = const { Cell::new(false) };
    /// The calling worker's pool and its count of processes placed but not started yet.
    static HOME: std::cell::RefCell<Option<(usize, Arc<Starting>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Processes placed on a worker that have not had their first poll (see `place_spawn`). On a
/// cache line of its own: the worker writes it on every spawn and start, its neighbours read it.
#[repr(align(128))]
#[derive(Default)]
struct Starting(AtomicUsize);

/// Held by a placed process until its first poll, when dropping it takes the process off its
/// worker's count of processes waiting to start.
pub struct StartTicket(Arc<Starting>);

impl Drop for StartTicket {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where `place_spawn` puts a process spawned on a worker.
pub enum Placement {
    /// On the calling worker.
    Here(StartTicket),
    /// On worker `index` (submit the start there with `submit_start`).
    On(usize, StartTicket),
}

/// How many spawned processes may wait to start on a worker before new ones go to a less
/// loaded neighbour. Small enough that a spawn loop spreads within its first batch; large
/// enough that a process spawning a few partners keeps them beside it (their messages then
/// never cross threads).
const SPREAD_AFTER: usize = 16;

pub struct Scheduler {
    pools: RwLock<PoolSet>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    next_connection: AtomicUsize,
    next_process: AtomicUsize,
}

/// The workers by index (indices are never reused, so a thread's index stays valid), and
/// which of them take new work in each pool.
struct PoolSet {
    /// `None` once the worker is retired: it takes no new jobs.
    senders: Vec<Option<mpsc::UnboundedSender<Job>>>,
    /// Each worker's processes waiting to start, by index.
    starting: Vec<Arc<Starting>>,
    /// The active workers of each pool (`CONNECTION`, `PROCESS`). An empty process pool means
    /// processes started from outside a worker share the connection workers.
    active: [Vec<usize>; 2],
    /// Threads started per pool, for their names.
    named: [usize; 2],
}

const CONNECTION: usize = 0;
const PROCESS: usize = 1;

/// How many workers each pool has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pools {
    pub connection_workers: usize,
    /// 0: processes started from outside a worker share the connection workers.
    pub process_workers: usize,
}

impl Scheduler {
    pub fn start(pools: Pools) -> Arc<Scheduler> {
        let scheduler = Scheduler {
            pools: RwLock::new(PoolSet {
                senders: Vec::new(),
                starting: Vec::new(),
                active: [Vec::new(), Vec::new()],
                named: [0, 0],
            }),
            threads: Mutex::new(Vec::new()),
            next_connection: AtomicUsize::new(0),
            next_process: AtomicUsize::new(0),
        };
        scheduler.resize(pools);
        Arc::new(scheduler)
    }

    /// The current pool sizes.
    pub fn pools(&self) -> Pools {
        sizes(&self.pools.read().expect("pools lock"))
    }

    /// Grows or shrinks the pools to `pools` while everything keeps running (hot reload of
    /// `host.workers` / `host.worker_count`). New workers take new work at once. A retired
    /// worker takes no new connections or services; what already runs on it (processes are
    /// bound to their worker's Lua state) keeps running there, and its thread ends with the
    /// last of them. Returns the sizes before.
    pub fn resize(&self, pools: Pools) -> Pools {
        let mut set = self.pools.write().expect("pools lock");
        let before = sizes(&set);
        let mut threads = self.threads.lock().expect("threads lock");
        for (pool, want, kind) in [
            (CONNECTION, pools.connection_workers.max(1), "conn"),
            (PROCESS, pools.process_workers, "proc"),
        ] {
            while set.active[pool].len() < want {
                let index = set.senders.len();
                let name = format!("moonwire-{kind}-{}", set.named[pool]);
                set.named[pool] += 1;
                let starting = Arc::new(Starting::default());
                let (tx, handle) = spawn_worker(index, pool, starting.clone(), name);
                set.senders.push(Some(tx));
                set.starting.push(starting);
                threads.push(handle);
                set.active[pool].push(index);
            }
            while set.active[pool].len() > want {
                let index = set.active[pool].pop().expect("a worker to retire");
                if let Some(tx) = set.senders[index].take() {
                    let _ = tx.send(Box::new(|| RETIRED.with(|r| r.set(true))));
                }
            }
        }
        before
    }

    /// The worker index of the calling thread, if it is a worker.
    pub fn current_worker() -> Option<usize> {
        WORKER_INDEX.with(|w| w.get())
    }

    /// Runs `job` on the calling worker when there is one (keeping talkers together), else on
    /// the next process worker round-robin.
    pub fn submit(&self, job: Job) {
        if Scheduler::current_worker().is_some() {
            return job();
        }
        let set = self.pools.read().expect("pools lock");
        let pool = if set.active[PROCESS].is_empty() {
            &set.active[CONNECTION]
        } else {
            &set.active[PROCESS]
        };
        let i = pool[self.next_process.fetch_add(1, Ordering::Relaxed) % pool.len()];
        send(&set, i, job);
    }

    /// Where a process spawned on the calling worker starts (`None` off a worker): here, unless
    /// this is a process worker with more than `SPREAD_AFTER` spawned processes still waiting
    /// to start and a worker of its pool has fewer. Connection workers keep what they spawn
    /// (a WebSocket handler then lives beside its connection) unless they are the only pool.
    pub fn place_spawn(&self) -> Option<Placement> {
        HOME.with(|home| {
            let home = home.borrow();
            let (pool, own) = home.as_ref()?;
            let waiting = own.0.load(Ordering::Relaxed);
            if waiting >= SPREAD_AFTER {
                let set = self.pools.read().expect("pools lock");
                // Without a process pool the connection workers run the services, and there
                // are no connections to keep handlers beside.
                let spreads = *pool == PROCESS || set.active[PROCESS].is_empty();
                let least = set.active[*pool]
                    .iter()
                    .map(|&i| (set.starting[i].0.load(Ordering::Relaxed), i))
                    .min()
                    .filter(|&(load, _)| spreads && load < waiting);
                if let Some((_, index)) = least {
                    let target = set.starting[index].clone();
                    target.0.fetch_add(1, Ordering::Relaxed);
                    return Some(Placement::On(index, StartTicket(target)));
                }
            }
            own.0.fetch_add(1, Ordering::Relaxed);
            Some(Placement::Here(StartTicket(own.clone())))
        })
    }

    /// Runs `job` (an HTTP connection) on the next connection worker round-robin.
    pub fn submit_connection(&self, job: Job) {
        let set = self.pools.read().expect("pools lock");
        let pool = &set.active[CONNECTION];
        let i = pool[self.next_connection.fetch_add(1, Ordering::Relaxed) % pool.len()];
        send(&set, i, job);
    }

    /// Runs `job` (a process start `place_spawn` placed) on worker `index`, or right here on
    /// the calling worker if `index` has retired since it was chosen: a start must not be
    /// dropped, or its registered process would never run nor exit.
    pub fn submit_start(&self, index: usize, job: Job) {
        let set = self.pools.read().expect("pools lock");
        let job = match set.senders.get(index).and_then(Option::as_ref) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(refused) => refused.0,
            },
            None => job,
        };
        drop(set);
        job();
    }

    /// Runs `job` on worker `index` (tests and diagnostics).
    pub fn submit_to(&self, index: usize, job: Job) {
        send(&self.pools.read().expect("pools lock"), index, job);
    }

    /// Closes the job channels and waits for the workers to finish.
    pub fn shutdown(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        drop(threads);
    }
}

fn sizes(set: &PoolSet) -> Pools {
    Pools {
        connection_workers: set.active[CONNECTION].len(),
        process_workers: set.active[PROCESS].len(),
    }
}

fn send(set: &PoolSet, index: usize, job: Job) {
    match set.senders.get(index).and_then(Option::as_ref) {
        Some(tx) if tx.send(job).is_ok() => {}
        _ => tracing::warn!("worker {index} is gone; job dropped"),
    }
}

/// One worker thread: a current-thread runtime and a `LocalSet` running the jobs it receives.
fn spawn_worker(
    index: usize,
    pool: usize,
    starting: Arc<Starting>,
    name: String,
) -> (mpsc::UnboundedSender<Job>, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            WORKER_INDEX.with(|w| w.set(Some(index)));
            HOME.with(|home| *home.borrow_mut() = Some((pool, starting)));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("worker runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                while let Some(job) = rx.recv().await {
                    // A panicking job must not take the worker (and its processes) down.
                    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                    {
                        tracing::error!(panic = panic_message(&panic), "worker job panicked");
                    }
                }
            });
            if RETIRED.with(|r| r.get()) {
                // Its processes and connections end on their own; only then does the thread.
                rt.block_on(local);
                tracing::debug!(worker = index, "retired worker finished");
            }
        })
        .expect("spawn worker thread");
    (tx, handle)
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
    fn resizing_adds_workers_that_take_new_work_and_retires_the_last_ones() {
        let s = Scheduler::start(Pools {
            connection_workers: 1,
            process_workers: 1,
        });
        // A task that outlives the retirement of its worker: it must still finish there.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        s.submit(Box::new(move || {
            tokio::task::spawn_local(async move {
                let _ = released.await;
                done_tx.send(Scheduler::current_worker()).unwrap();
            });
        }));
        let before = s.resize(Pools {
            connection_workers: 2,
            process_workers: 3,
        });
        assert_eq!(
            before,
            Pools {
                connection_workers: 1,
                process_workers: 1
            }
        );
        let where_they_run = |s: &Scheduler, n: usize| {
            let (tx, rx) = std::sync::mpsc::channel();
            for _ in 0..n {
                let (tx1, tx2) = (tx.clone(), tx.clone());
                s.submit(Box::new(move || {
                    tx1.send(Scheduler::current_worker()).unwrap()
                }));
                s.submit_connection(Box::new(move || {
                    tx2.send(Scheduler::current_worker().map(|w| w + 100))
                        .unwrap()
                }));
            }
            drop(tx);
            let mut got: Vec<usize> = rx.iter().map(|w| w.expect("on a worker")).collect();
            got.sort_unstable();
            got.dedup();
            got
        };
        // Workers 0 (conn) and 1 (proc) from the start; 2 (conn), 3 and 4 (proc) added.
        assert_eq!(where_they_run(&s, 6), [1, 3, 4, 100, 102]);

        s.resize(Pools {
            connection_workers: 1,
            process_workers: 1,
        });
        assert_eq!(where_they_run(&s, 4), [1, 100]);
        assert_eq!(
            s.pools(),
            Pools {
                connection_workers: 1,
                process_workers: 1
            }
        );

        // Retiring every process worker: services share the connection workers again, and
        // the task still running on the retired worker 1 finishes there.
        s.resize(Pools {
            connection_workers: 1,
            process_workers: 0,
        });
        assert_eq!(where_they_run(&s, 2), [0, 100]);
        release.send(()).unwrap();
        assert_eq!(
            done_rx
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap(),
            Some(1)
        );
    }

    /// Where `n` spawns on worker `on` are placed while none of them starts (their tickets
    /// are held): `usize::MAX` = here.
    fn spawn_placements(s: &Arc<Scheduler>, on: usize, n: usize) -> Vec<usize> {
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = s.clone();
        s.submit_to(
            on,
            Box::new(move || {
                let mut tickets = Vec::new();
                let mut placed = Vec::new();
                for _ in 0..n {
                    match inner.place_spawn().expect("on a worker") {
                        Placement::Here(t) => {
                            placed.push(usize::MAX);
                            tickets.push(t)
                        }
                        Placement::On(i, t) => {
                            placed.push(i);
                            tickets.push(t)
                        }
                    }
                }
                tx.send(placed).unwrap();
            }),
        );
        rx.recv().unwrap()
    }

    #[test]
    fn a_spawn_burst_on_a_process_worker_spreads_over_its_pool() {
        let s = Scheduler::start(Pools {
            connection_workers: 1,
            process_workers: 2,
        });
        assert!(s.place_spawn().is_none(), "off a worker nothing is placed");
        // Workers: 0 connection, 1 and 2 process.
        let placed = spawn_placements(&s, 1, 40);
        assert!(placed[..SPREAD_AFTER].iter().all(|&w| w == usize::MAX));
        let here = placed.iter().filter(|&&w| w == usize::MAX).count();
        let there = placed.iter().filter(|&&w| w == 2).count();
        assert_eq!((here, there), (20, 20), "{placed:?}");
        // The tickets were dropped with the job: both workers count nothing waiting again.
        let placed = spawn_placements(&s, 1, SPREAD_AFTER);
        assert!(placed.iter().all(|&w| w == usize::MAX), "{placed:?}");
        // A connection worker keeps what it spawns while a process pool exists.
        let placed = spawn_placements(&s, 0, 40);
        assert!(placed.iter().all(|&w| w == usize::MAX), "{placed:?}");
        // Without a process pool the connection workers spread too.
        let s = Scheduler::start(Pools {
            connection_workers: 2,
            process_workers: 0,
        });
        let placed = spawn_placements(&s, 0, 2 * SPREAD_AFTER + 2);
        assert_eq!(placed.iter().filter(|&&w| w == 1).count(), SPREAD_AFTER + 1);
    }

    #[test]
    fn a_start_placed_on_a_worker_that_retired_runs_on_the_caller() {
        let s = Scheduler::start(Pools {
            connection_workers: 1,
            process_workers: 2,
        });
        // Workers: 0 connection, 1 and 2 process; retiring one process worker retires 2.
        s.resize(Pools {
            connection_workers: 1,
            process_workers: 1,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = s.clone();
        s.submit_to(
            1,
            Box::new(move || {
                inner.submit_start(
                    2,
                    Box::new(move || tx.send(Scheduler::current_worker()).unwrap()),
                )
            }),
        );
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(),
            Some(1)
        );
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
