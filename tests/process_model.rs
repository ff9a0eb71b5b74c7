//! The process model through the real binary: each test runs a `tests/fixtures/proc_*` registry
//! whose scripts assert from inside the runtime and log `TEST PASS/FAIL <name>` (see
//! `tests/fixtures/proc_lib/harness.rs`).

#[path = "fixtures/proc_lib/harness.rs"]
mod harness;
mod support;

use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[test]
fn send_receive_payload_shapes_and_several_payloads() {
    let run = harness::start("proc_send");
    run.expect_pass(
        &[
            "send.shapes",
            "send.broadcast",
            "send.listen",
            "send.refusals",
            "send.echo",
        ],
        T,
    );
}

#[test]
fn per_sender_fifo_order_1000_messages() {
    let run = harness::start("proc_fifo");
    run.expect_pass(&["fifo.per_sender"], T);
}

#[test]
fn a_spawn_burst_on_two_workers_keeps_arguments_messages_monitors_and_links() {
    let run = harness::start("proc_spread");
    run.expect_pass(
        &[
            "spread.unusual_arguments",
            "spread.monitored_burst",
            "spread.linked_burst",
        ],
        T,
    );
}

#[test]
fn deep_copy_isolation() {
    let run = harness::start("proc_deepcopy");
    run.expect_pass(
        &[
            "copy.self_send",
            "copy.across_processes",
            "copy.error_objects",
        ],
        T,
    );
}

#[test]
fn chunk_level_locals_not_shared() {
    let run = harness::start("proc_locals");
    run.expect_pass(
        &["locals.two_instances", "locals.twin.one", "locals.twin.two"],
        T,
    );
}

#[test]
fn name_registry() {
    let run = harness::start("proc_names");
    run.expect_pass(
        &[
            "names.basics",
            "names.conflicts",
            "names.released_on_exit",
            "names.spawner",
        ],
        T,
    );
}

#[test]
fn monitor_exit_results() {
    let run = harness::start("proc_monitor");
    run.expect_pass(
        &[
            "monitor.normal_exits",
            "monitor.terminate",
            "monitor.dead_and_unknown",
            "monitor.unmonitor",
            "monitor.spawn_monitored",
        ],
        T,
    );
}

#[test]
fn lua_error_reaches_the_monitor_with_its_message() {
    let run = harness::start("proc_monitor");
    run.expect_pass(&["monitor.error_exits"], T);
    // The runtime logs the failure naming the process too.
    let line = run.wait_for("boom from child", T);
    run.check(line.contains("app:child"), "failure log names the entry");
}

#[test]
fn links_link_down_and_trap_links() {
    let run = harness::start("proc_links");
    run.expect_pass(
        &[
            "links.trapped",
            "links.untrapped",
            "links.chain",
            "links.parent_failure",
        ],
        T,
    );
}

#[test]
fn exec_returns_a_value_and_spawn_refusals() {
    let run = harness::start("proc_exec");
    run.expect_pass(&["exec.values", "exec.spawn_refusals"], T);
}

#[test]
fn cancel_delivers_reason() {
    let run = harness::start("proc_cancel");
    run.expect_pass(&["cancel.reason", "cancel.advisory"], T);
}

#[test]
fn channels_buffered_unbuffered_close_and_select() {
    let run = harness::start("proc_channels");
    run.expect_pass(
        &[
            "channel.buffered",
            "channel.two_waiters",
            "channel.unbuffered",
            "channel.close",
            "channel.select_ready",
            "channel.select_default",
            "channel.select_timeout",
        ],
        T,
    );
}

#[test]
fn time_sleep_after_timer_ticker() {
    let run = harness::start("proc_time");
    run.expect_pass(
        &["time.sleep", "time.after", "time.timer", "time.ticker"],
        T,
    );
}

#[test]
fn coroutine_wrap_receive_waits_and_spawn_dies_with_main() {
    let run = harness::start("proc_coroutines");
    run.expect_pass(
        &[
            "coroutine.wrap_receive_waits",
            "coroutine.terminated_while_waiting",
            "coroutine.wrap_yields",
            "coroutine.spawn_concurrent",
            "coroutine.spawn_killed_with_main",
        ],
        T,
    );
}

#[test]
fn sandbox_globals_require_and_read_only_libraries() {
    let run = harness::start("proc_sandbox");
    run.expect_pass(
        &[
            "sandbox.absent_and_present",
            "sandbox.require",
            "sandbox.read_only",
            "sandbox.isolation",
            "sandbox.other_process",
        ],
        T,
    );
}

#[test]
fn runaway_loop_does_not_freeze_its_neighbour() {
    let run = harness::start("proc_runaway");
    let modes = ["plain", "pcall", "table", "sort", "coroutine"];
    let names: Vec<String> = modes
        .iter()
        .flat_map(|m| {
            [
                format!("runaway.heartbeat.{m}"),
                format!("runaway.stopped.{m}"),
            ]
        })
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    run.expect_pass(&names, Duration::from_secs(18));
    // The runtime says which process ran away (a warning or the error that stopped it).
    let logs = run.logs();
    let named = logs.iter().any(|l| {
        l.contains("app:runaway")
            && (l.contains("WARN") || l.contains("ERROR"))
            && !l.contains("TEST ")
    });
    run.check(
        named,
        "no warning or error line names the runaway process app:runaway",
    );
}

#[test]
fn memory_caps_stop_only_the_process_over_its_cap() {
    let run = harness::start("proc_memory");
    run.expect_pass(
        &[
            "memory.cap_stops_a_hoarder",
            "memory.garbage_is_not_held_against_a_process",
            "memory.uncapped_neighbour_is_unaffected",
            "memory.pcall_catches_the_limit",
        ],
        Duration::from_secs(40),
    );
    let logs = run.logs();
    let logged = logs.iter().any(|l| {
        l.contains("process failed") && l.contains("app:hoarder") && l.contains("memory limit")
    });
    run.check(logged, "no log line names the hoarder and its memory limit");
}

#[test]
fn upgrade_keeps_pid_monitors_names_and_mailbox() {
    let run = harness::start("proc_upgrade");
    run.expect_pass(
        &["upgrade.in_place", "upgrade.other_entry", "upgrade.failed"],
        T,
    );
}

#[test]
fn database_calls_wait_without_blocking_the_worker() {
    let run = harness::start("proc_sql");
    run.expect_pass(
        &[
            "sql.waits_behind_a_transaction",
            "sql.in_a_coroutine",
            "sql.killed_while_waiting",
        ],
        T,
    );
}
