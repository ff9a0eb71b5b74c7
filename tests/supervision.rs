//! Supervision of `process.service` entries through the real binary (§9.1): exponential
//! backoff with its cap, `max_attempts` and the log line that says so, normal exits left alone,
//! recovery after failures, and `requires`/`depends_on` start order.

#[path = "fixtures/proc_lib/harness.rs"]
mod harness;
mod support;

use harness::timestamp;
use std::time::Duration;

/// Log lines containing every one of `needles`, in order.
fn lines_with(run: &harness::LuaRun, needles: &[&str]) -> Vec<String> {
    run.logs()
        .into_iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// Milliseconds between consecutive lines' timestamps.
fn gaps_ms(lines: &[String]) -> Vec<f64> {
    lines
        .windows(2)
        .map(|w| {
            let mut d = timestamp(&w[1]) - timestamp(&w[0]);
            if d < 0.0 {
                d += 86_400.0; // crossed midnight
            }
            d * 1000.0
        })
        .collect()
}

fn within(got: f64, want: f64, tolerance: f64) -> bool {
    got >= want * (1.0 - tolerance) && got <= want * (1.0 + tolerance)
}

#[test]
fn crashing_service_backs_off_exponentially_and_gives_up_after_max_attempts() {
    let run = harness::start("proc_sup_crash");
    run.wait_for("service=app:crasher-service", Duration::from_secs(10));
    let give_up = |service: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = lines_with(&run, &["giving up", service]);
            if let Some(l) = found.first() {
                return l.clone();
            }
            run.check(
                std::time::Instant::now() < deadline,
                &format!("{service} never gave up"),
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let backoff_line = give_up("service=app:crasher-service");
    let capped_line = give_up("service=app:capped-service");
    // Nothing runs after giving up: wait well past the next delay (400 ms) before counting.
    std::thread::sleep(Duration::from_millis(900));

    run.check(
        backoff_line.contains("max_attempts = 3"),
        "the give-up line names max_attempts",
    );
    run.check(
        backoff_line.contains("ERROR"),
        "giving up is logged as an error",
    );
    let runs = lines_with(&run, &["crash run tag=backoff"]);
    run.check(
        runs.len() == 3,
        &format!("expected exactly 3 runs, got {}", runs.len()),
    );
    let gaps = gaps_ms(&runs);
    run.check(
        within(gaps[0], 100.0, 0.6) && within(gaps[1], 200.0, 0.6),
        &format!("backoff gaps {gaps:?} ms, want ~[100, 200] (±60%)"),
    );
    // The restart lines carry the computed delay.
    let restarts = lines_with(
        &run,
        &["restarting after backoff", "service=app:crasher-service"],
    );
    run.check(
        restarts.len() == 2,
        &format!("expected 2 restart lines, got {}", restarts.len()),
    );
    run.check(
        restarts[0].contains("delay_ms=100") && restarts[1].contains("delay_ms=200"),
        "restart lines state delays of 100 and 200 ms",
    );
    let failures = lines_with(&run, &["process failed", "crash on purpose (backoff)"]);
    run.check(
        failures.len() == 3,
        "each failed run is logged with its error",
    );

    let capped = lines_with(&run, &["crash run tag=capped"]);
    run.check(
        capped.len() == 3,
        &format!("capped: expected 3 runs, got {}", capped.len()),
    );
    let gaps = gaps_ms(&capped);
    run.check(
        within(gaps[0], 100.0, 0.6) && within(gaps[1], 150.0, 0.6),
        &format!("capped gaps {gaps:?} ms, want ~[100, 150] (max_delay caps 1000)"),
    );
    run.check(capped_line.contains("giving up"), "capped service gave up");

    // Runs longer than stable_threshold reset the count: never given up, always 50 ms delays.
    let stable = lines_with(&run, &["slow crash run"]);
    run.check(
        stable.len() >= 4,
        &format!("stable-service ran {} times", stable.len()),
    );
    run.check(
        lines_with(&run, &["giving up", "service=app:stable-service"]).is_empty(),
        "stable-service was given up although each run passed stable_threshold",
    );
    let delays = lines_with(
        &run,
        &["restarting after backoff", "service=app:stable-service"],
    );
    run.check(
        !delays.is_empty()
            && delays
                .iter()
                .all(|l| l.contains("attempt=1 ") && l.contains("delay_ms=50")),
        &format!("every restart is attempt 1 with the initial delay: {delays:?}"),
    );
}

#[test]
fn a_normal_exit_is_not_restarted_whatever_it_returns() {
    let run = harness::start("proc_sup_normal");
    let give_up = run.wait_for("giving up", Duration::from_secs(10));
    run.check(
        give_up.contains("app:returns-error"),
        "only the failing service gives up",
    );
    // Well past the 50 ms backoff: any restart of a normal exit would have happened.
    std::thread::sleep(Duration::from_millis(600));
    for how in ["value", "one", "false", "nothing"] {
        let runs = lines_with(&run, &[&format!("finisher run how={how} ")]);
        run.check(
            runs.len() == 1,
            &format!("returns-{how}: {} runs, want 1", runs.len()),
        );
        let exited = lines_with(
            &run,
            &["exited normally", &format!("service=app:returns-{how}")],
        );
        run.check(
            exited.len() == 1,
            &format!("returns-{how}: no 'exited normally' line"),
        );
    }
    // `return nil, err` is a failure: restarted until max_attempts (2 runs).
    let runs = lines_with(&run, &["finisher run how=error "]);
    run.check(
        runs.len() == 2,
        &format!("returns-error: {} runs, want 2", runs.len()),
    );
    run.check(
        !lines_with(&run, &["declined to run", "process failed"]).is_empty(),
        "the returned error is logged",
    );
}

#[test]
fn a_service_that_fails_twice_then_succeeds_stops_after_success() {
    let run = harness::start("proc_sup_flaky");
    run.wait_for("service=app:flaky-service", Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines_with(&run, &["exited normally", "service=app:flaky-service"]).is_empty() {
        run.check(
            std::time::Instant::now() < deadline,
            "flaky service never exited normally",
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let runs = lines_with(&run, &["flaky run n="]);
    run.check(
        runs.len() == 3,
        &format!("expected 3 runs, got {}", runs.len()),
    );
    for (i, line) in runs.iter().enumerate() {
        run.check(
            line.contains(&format!("flaky run n={} ", i + 1)),
            "the store counter survives restarts",
        );
        // Every restart is a new process with fresh chunk state.
        run.check(
            line.contains("chunk_runs=1"),
            "chunk-level state was carried over a restart",
        );
    }
    let gaps = gaps_ms(&runs);
    run.check(
        within(gaps[0], 50.0, 0.6) && within(gaps[1], 100.0, 0.6),
        &format!("gaps {gaps:?} ms, want ~[50, 100]"),
    );
    run.check(
        lines_with(&run, &["giving up"]).is_empty(),
        "gave up on a recovering service",
    );
    // Each run had its own pid.
    let starts = lines_with(&run, &["service started", "service=app:flaky-service"]);
    let pids: std::collections::HashSet<String> =
        starts.iter().map(|l| support::field(l, "pid")).collect();
    run.check(
        starts.len() == 3 && pids.len() == 3,
        "each restart is a new pid",
    );
}

#[test]
fn requires_and_depends_on_order_service_starts() {
    let run = harness::start("proc_sup_requires");
    run.expect_pass(
        &["sup.requires.b", "sup.requires.c"],
        Duration::from_secs(10),
    );
    let started: Vec<String> = lines_with(&run, &["service started"])
        .iter()
        .map(|l| support::field(l, "service"))
        .collect();
    let pos = |s: &str| started.iter().position(|x| x == s).unwrap_or(usize::MAX);
    let (a, b, c) = (
        pos("app:3-a-service"),
        pos("app:2-b-service"),
        pos("app:1-c-service"),
    );
    run.check(
        c != usize::MAX && a < b && b < c,
        &format!("start order {started:?}"),
    );
}

#[test]
fn shutdown_cancels_services_then_terminates_the_stubborn_ones() {
    let mut run = harness::start("proc_sup_stop");
    run.wait_for("polite ready", Duration::from_secs(10));
    run.wait_for("stubborn ready", Duration::from_secs(10));
    let started = std::time::Instant::now();
    let status = run.mw.stop();
    let took = started.elapsed();
    let polite = run.wait_for("polite got", Duration::from_secs(2));
    run.check(
        polite.contains("kind=pid.cancel reason=service stopping"),
        &format!("CANCEL with the stop reason: {polite}"),
    );
    run.check(status.success(), &format!("clean shutdown, got {status:?}"));
    // The stubborn service held shutdown for about its stop_timeout, not the 10 s default.
    run.check(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        &format!("shutdown took {took:?}"),
    );
    run.check(
        run.count("service stopped") >= 2,
        "both services reported stopped",
    );
}
