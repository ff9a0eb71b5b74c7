#!/usr/bin/env bash
# The process-model benchmark of issue 2: spawn 100,000 idle processes (spawns/s and RSS per
# idle process), ping-pong between two processes (round trips/s), and one process sending the
# same 300-byte string to 10,000 processes (deliveries/s). Each measurement runs RUNS times
# (default 3), each measurement in a fresh moonwire process (and a fresh Erlang VM), so one
# does not run amid the garbage of another, and the median is reported. When `erl`
# is on PATH the same measurements run in Erlang (erlang_bench.erl) and the ratios are printed.
#
# Usage: bench/process/run.sh            (from anywhere; builds with `cargo build --release`)
# Env:   RUNS=3  NO_BUILD=1  MOONWIRE_BIN=path  NO_ERLANG=1
#        SPAWN_N=100000 PINGPONG_N=200000 BCAST_N=10000 BCAST_ROUNDS=10
#        ONLY=spawn|pingpong|broadcast (run only that measurement)
#
# Everything it starts runs under this shell and is stopped on exit (also on Ctrl-C).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-3}
SPAWN_N=${SPAWN_N:-100000}
PINGPONG_N=${PINGPONG_N:-200000}
BCAST_N=${BCAST_N:-10000}
BCAST_ROUNDS=${BCAST_ROUNDS:-10}
BIN=${MOONWIRE_BIN:-$ROOT/target/release/moonwire}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}

if [[ -z "${NO_BUILD:-}" && -z "${MOONWIRE_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/moonwire-bench.XXXXXX")
CHILD=""
cleanup() {
    if [[ -n "$CHILD" ]] && kill -0 "$CHILD" 2>/dev/null; then
        kill -TERM "$CHILD" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Stops the current child: SIGTERM, then SIGKILL after 10 s.
stop_child() {
    [[ -n "$CHILD" ]] || return 0
    kill -TERM "$CHILD" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
    CHILD=""
}

# One moonwire process measuring $2; prints "<name> PER_SEC" (and "mem BYTES" for spawn).
run_moonwire() {
    local dir="$TMP/moonwire-$1-$2" log
    mkdir -p "$dir/bench/process"
    cp -r "$HERE/registry" "$dir/bench/process/registry"
    sed -i -e "s/spawn_n: [0-9]*/spawn_n: $SPAWN_N/" -e "s/pingpong_n: [0-9]*/pingpong_n: $PINGPONG_N/" \
        -e "s/bcast_n: [0-9]*/bcast_n: $BCAST_N/" -e "s/bcast_rounds: [0-9]*/bcast_rounds: $BCAST_ROUNDS/" \
        "$dir/bench/process/registry/_index.yaml"
    sed -i "s/^\( *\)rss_pause_ms: \(.*\)/\1rss_pause_ms: \2\n\1only: $2/" "$dir/bench/process/registry/_index.yaml"
    log="$dir/log"
    : >"$log"
    (cd "$dir" && MOONWIRE_LOG=info exec "$BIN" run --registry bench/process/registry --no-watch) 2>"$log" &
    CHILD=$!
    local before="" after="" line status=timeout
    # The log is followed as it is written (`tail -F` sleeps on inotify), not polled: a loop of
    # greps every few milliseconds took a measurable share of the 2 cores from the benchmark,
    # while Erlang's run below is only waited for. The timeout bounds each wait for a line.
    while IFS= read -r -t "$RUN_TIMEOUT" line; do
        case "$line" in
            *"idle before"*) before=$(rss_kb "$CHILD") ;;
            *"idle spawned"*) after=$(rss_kb "$CHILD") ;;
            *"bench done"*) status=done; break ;;
            *"process failed"* | *"service failed"* | *"start failed"* | *panic*) status=failed; break ;;
        esac
    done < <(tail -n +1 --pid="$CHILD" -F "$log" 2>/dev/null)
    if [[ "$status" != done ]]; then
        echo "moonwire run $1 $status (or exited):" >&2; cat "$log" >&2; stop_child; return 1
    fi
    stop_child
    sed -n 's/.*bench result name=\([a-z]*\) .*per_sec=\([0-9]*\).*/\1 \2/p' "$log"
    if [[ -n "$before" && -n "$after" ]]; then echo "mem $(( (after - before) * 1024 / SPAWN_N ))"; fi
}

# One Erlang VM measuring $1; same output lines.
run_erlang() {
    local out
    out=$(cd "$TMP" && escript "$HERE/erlang_bench.erl" "$SPAWN_N" "$PINGPONG_N" "$BCAST_N" "$BCAST_ROUNDS" "$1")
    sed -n 's/.*bench result name=\([a-z]*\) .*per_sec=\([0-9]*\).*/\1 \2/p' <<<"$out"
    sed -n 's/.*bench rss before_kb=\([0-9]*\) after_kb=\([0-9]*\).*/\1 \2/p' <<<"$out" |
        while read -r b a; do echo "mem $(( (a - b) * 1024 / SPAWN_N ))"; done
}

median() { sort -n | awk '{v[NR]=$1} END {if (NR == 0) print "-"; else print v[int((NR + 1) / 2)]}'; }

last() { awk '{print $NF}' <<<"$1"; }

declare -A MW ER
HAVE_ERL=""
if [[ -z "${NO_ERLANG:-}" ]] && command -v erl >/dev/null && command -v escript >/dev/null; then HAVE_ERL=1; fi

echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
MEASURE=${ONLY:-spawn pingpong broadcast}
for i in $(seq 1 "$RUNS"); do
    for m in $MEASURE; do
        out=$(run_moonwire "$i" "$m") || exit 1
        while read -r k v; do MW[$k]+="$v "; done <<<"$out"
    done
    echo "moonwire run $i: spawn=$(last "${MW[spawn]:-}")/s mem=$(last "${MW[mem]:-}")B" \
        "pingpong=$(last "${MW[pingpong]:-}")/s broadcast=$(last "${MW[broadcast]:-}")/s"
    if [[ -n "$HAVE_ERL" ]]; then
        for m in $MEASURE; do
            while read -r k v; do ER[$k]+="$v "; done < <(run_erlang "$m")
        done
        echo "erlang   run $i: spawn=$(last "${ER[spawn]:-}")/s mem=$(last "${ER[mem]:-}")B" \
            "pingpong=$(last "${ER[pingpong]:-}")/s broadcast=$(last "${ER[broadcast]:-}")/s"
    fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "-" || b == 0 || a == "-") print "-"; else printf "%.2f", a / b }'; }
kb() { awk -v b="$1" 'BEGIN { if (b == "-") print "-"; else printf "%.2f", b / 1024 }'; }

echo
echo "Process model, median of $RUNS runs (spawn N=$SPAWN_N, ping-pong N=$PINGPONG_N," \
    "broadcast $BCAST_N receivers x $BCAST_ROUNDS rounds of a 300-byte string; KB = 1024 bytes)"
printf "%-36s %14s %14s %10s %12s\n" "measurement" "moonwire" "erlang" "mw/erl" "target"
for row in "spawn|spawns/s|>= 300000" "mem|KB RSS per idle process|<= 4.00" \
    "pingpong|round trips/s|>= 400000" "broadcast|deliveries/s|>= 600000"; do
    IFS='|' read -r key label target <<<"$row"
    m=$(med "${MW[$key]:-}")
    e="-"
    [[ -n "$HAVE_ERL" ]] && e=$(med "${ER[$key]:-}")
    if [[ "$key" == "mem" ]]; then m=$(kb "$m"); e=$(kb "$e"); fi
    printf "%-36s %14s %14s %10s %12s\n" "$key ($label)" "$m" "$e" "$(ratio "$m" "$e")" "$target"
done
[[ -n "$HAVE_ERL" ]] || echo "(Erlang columns skipped: NO_ERLANG is set or erl is not on PATH; apt-get install erlang-base)"
