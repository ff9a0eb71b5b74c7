//! Supervision of `process.service` entries (§9.1): start, watch, restart with exponential
//! backoff and jitter, give up after `max_attempts` consecutive failures, stop gracefully.
//! Knows nothing of Lua: it is handed a function that starts one run of the service.

use crate::process::pid::{Event, ExitResult, Pid};
use crate::process::table::ProcessTable;
use crate::registry::kinds::{EntryId, Lifecycle};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// One run of a service: its pid and a receiver for its exit.
pub type StartFn = dyn Fn() -> Result<(Pid, oneshot::Receiver<ExitResult>), String> + Send + Sync;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Starting,
    Running,
    Exited,
    Failed,
    Stopped,
}

/// A handle to a supervised service: stop it, or watch its state.
pub struct ServiceHandle {
    stop: watch::Sender<bool>,
    pub state: watch::Receiver<ServiceState>,
    /// The pid of the current run, while there is one.
    pub pid: watch::Receiver<Option<Pid>>,
    task: tokio::task::JoinHandle<()>,
}

impl ServiceHandle {
    /// Stops the service (CANCEL, then terminate after `stop_timeout`) and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The delay before restart number `n` (1-based), before jitter.
pub fn backoff(lifecycle: &Lifecycle, n: u32) -> Duration {
    let r = &lifecycle.restart;
    let factor = r.backoff_factor.max(1.0).powi(n.saturating_sub(1) as i32);
    let secs = (r.initial_delay.as_secs_f64() * factor).min(r.max_delay.as_secs_f64());
    Duration::from_secs_f64(secs.max(0.0))
}

fn with_jitter(d: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return d;
    }
    let j = jitter.min(1.0);
    let f = 1.0 - j + rand::random::<f64>() * 2.0 * j;
    Duration::from_secs_f64(d.as_secs_f64() * f)
}

pub fn supervise(
    id: EntryId,
    lifecycle: Lifecycle,
    procs: Arc<ProcessTable>,
    start: Arc<StartFn>,
) -> ServiceHandle {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(ServiceState::Starting);
    let (pid_tx, pid_rx) = watch::channel(None);
    crate::metrics::service_supervised(&id);
    let task = tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            let _ = state_tx.send(ServiceState::Starting);
            let started_at = Instant::now();
            let outcome = match start() {
                Ok((pid, exit_rx)) => {
                    let _ = state_tx.send(ServiceState::Running);
                    let _ = pid_tx.send(Some(pid.clone()));
                    tracing::info!(service = %id, %pid, "service started");
                    tokio::select! {
                        result = exit_rx => Some(result.unwrap_or(ExitResult::Error("terminated".into()))),
                        _ = stop_rx.changed() => {
                            stop_run(&procs, &pid, lifecycle.stop_timeout).await;
                            None
                        }
                    }
                }
                Err(e) => Some(ExitResult::Error(format!("start failed: {e}"))),
            };
            let _ = pid_tx.send(None);
            let Some(result) = outcome else {
                let _ = state_tx.send(ServiceState::Stopped);
                tracing::info!(service = %id, "service stopped");
                return;
            };
            match result {
                ExitResult::Value(_) => {
                    let _ = state_tx.send(ServiceState::Exited);
                    tracing::info!(service = %id, "service exited normally; not restarting");
                    return;
                }
                ExitResult::Error(error) => {
                    let _ = state_tx.send(ServiceState::Failed);
                    if started_at.elapsed() >= lifecycle.stable_threshold {
                        failures = 0;
                    }
                    failures += 1;
                    let max = lifecycle.restart.max_attempts;
                    if max > 0 && failures >= max {
                        tracing::error!(service = %id, %error, attempts = failures,
                            "service failed {failures} times in a row; giving up (max_attempts = {max})");
                        return;
                    }
                    let delay =
                        with_jitter(backoff(&lifecycle, failures), lifecycle.restart.jitter);
                    tracing::warn!(service = %id, %error, attempt = failures, delay_ms = delay.as_millis() as u64,
                        "service failed; restarting after backoff");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop_rx.changed() => {
                            let _ = state_tx.send(ServiceState::Stopped);
                            return;
                        }
                    }
                    crate::metrics::service_restarted(&id);
                }
            }
        }
    });
    ServiceHandle {
        stop: stop_tx,
        state: state_rx,
        pid: pid_rx,
        task,
    }
}

async fn stop_run(table: &ProcessTable, pid: &Pid, timeout: Duration) {
    table.send_event(
        pid,
        Event::Cancel {
            from: None,
            reason: "service stopping".into(),
        },
    );
    let deadline = Instant::now() + timeout;
    while table.get(pid.id()).is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(p) = table.get(pid.id()) {
        p.mailbox.kill("service stopping");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut l = Lifecycle::default();
        l.restart.initial_delay = Duration::from_secs(1);
        l.restart.max_delay = Duration::from_secs(5);
        assert_eq!(backoff(&l, 1), Duration::from_secs(1));
        assert_eq!(backoff(&l, 2), Duration::from_secs(2));
        assert_eq!(backoff(&l, 3), Duration::from_secs(4));
        assert_eq!(backoff(&l, 4), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_in_band() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_secs(10), 0.1).as_secs_f64();
            assert!((9.0..=11.0).contains(&d));
        }
    }
}
