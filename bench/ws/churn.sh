#!/usr/bin/env bash
# Churn soak (mission "long churn leaves no leaked processes or memory"): the project's app with
# its real 10 ms ticker; ROUNDS times, N clients connect (one token), take ticks for DUR seconds
# and disconnect. After each round it waits until the server reports no open WebSocket and
# prints the server's RSS and live processes. Live processes must come back to the idle count
# every round, and RSS must level off after the first rounds instead of climbing with each.
#   bash bench/ws/churn.sh [N] [ROUNDS] [DUR_S]        (defaults 2000 8 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
N=${1:-2000}
ROUNDS=${2:-8}
DUR=${3:-3}
. bench/ws/tools.sh
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin moonwire
work=$(mktemp -d)
spid=""
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT
cp -r registry scripts public "$work/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work" && MOONWIRE_LOG=${MOONWIRE_LOG:-info} exec "$repo/target/release/moonwire" run --no-watch --addr "127.0.0.1:$port" 2> "$work/server.log") &
spid=$!
for _ in $(seq 100); do grep -q "api_key=" "$work/server.log" 2>/dev/null && break; sleep 0.1; done
key=$(grep -o 'api_key=[A-Za-z0-9]*' "$work/server.log" | head -1 | cut -d= -f2)
sleep 1
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$spid/status"; }
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
settle() { # until no WebSocket is open (at most 20 s), then a second for the exits to finish
  for _ in $(seq 200); do [ "$(metric moonwire_ws_connections)" = "0" ] && break; sleep 0.1; done
  sleep 1
}
settle
echo "round  clients  msgs_per_sec  open_ws  processes_alive  rss_mb"
echo "idle   -        -             $(metric moonwire_ws_connections)        $(metric moonwire_processes_alive)                $(rss_mb)"
for r in $(seq 1 "$ROUNDS"); do
  line=$("$WSLOAD" --url "ws://127.0.0.1:$port/ws/ticker" -n "$N" --ramp-rate 2000 --warmup 1 --duration "$DUR" \
    --tick-ms 10 --connect-timeout-ms 60000 --server-pid "$spid" \
    --auth-url "http://127.0.0.1:$port/auth/token" --api-key "$key" -q 2> "$work/wsload.log" | tail -1)
  settle
  read -r clients rate < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["clients_connected"], round(r["msgs_per_sec"]))' "$line")
  printf "%-6s %-8s %-13s %-8s %-16s %s\n" "$r" "$clients" "$rate" "$(metric moonwire_ws_connections)" "$(metric moonwire_processes_alive)" "$(rss_mb)"
done
grep -E "WARN|ERROR" "$work/server.log" | grep -v "demo key" | sed 's/^[^ ]* *//' | cut -c1-160 | sort | uniq -c | sort -rn | head -5 || true
