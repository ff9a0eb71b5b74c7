#!/usr/bin/env bash
# WebSocket fan-out benchmark (issue 4), with the load tool and peer servers of
# ../shared/bench, everything on 127.0.0.1.
#   bash bench/ws/run.sh MODE N [DURATION_S]
#   MODE: app       the project's own ticker (registry/, scripts/)
#         tutorial  the tutorial's own _index.yaml and five scripts, extracted from the seed
#         bun | node-ws   the peer servers, through ../shared/bench/peers/bench.sh
# Prints wsload's JSON line and a one-line summary. Stops everything it starts.
# Env: NO_BUILD=1 (use the last release build), MOONWIRE_BIN=path (another moonwire binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
MODE=${1:?usage: run.sh MODE N [DURATION_S]}
N=${2:?usage: run.sh MODE N [DURATION_S]}
DUR=${3:-20}
. bench/ws/tools.sh

summary() {
  python3 -c '
import json, sys
r = json.loads(sys.stdin.readline())
r.update({"server_" + k: v for k, v in (r.get("server") or {}).items()})
keys = ["clients_connected", "msgs_per_sec", "delivered_fraction", "ticks_per_sec_observed",
        "spread_ms_p50", "spread_ms_p99", "ping_rtt_ms_p50", "ping_rtt_ms_p99", "server_cpu_pct",
        "server_rss_mb_start", "server_rss_mb_end", "client_cpu_pct", "host_cpu_busy_pct"]
print("  ".join(f"{k}={r.get(k)}" for k in keys))'
}

case "$MODE" in
  bun|node-ws)
    for p in bun node-ws; do
      [ -d "$tools/bench/peers/$p/node_modules" ] || (cd "$tools/bench/peers/$p" && npm ci --silent)
    done
    line=$(cd "$tools/bench/peers" && IDLE_WAIT=${IDLE_WAIT:-20} ./bench.sh "$MODE" "$N" "$DUR" -- --ping --sample 1000 --connect-timeout-ms 60000 | tail -1)
    echo "$line"; echo "$line" | summary
    exit 0 ;;
  app|tutorial) ;;
  *) echo "unknown mode $MODE" >&2; exit 2 ;;
esac

[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin moonwire
work=$(mktemp -d)
spid=""
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT
cp -r public "$work/"
if [ "$MODE" = app ]; then
  cp -r registry scripts "$work/"; reg=registry
else
  mkdir -p "$work/src"; reg=src
  python3 - "$shared/seeds/000_0bf29ad7390b3fb1.txt" "$work/src" <<'PY'
import sys
t = open(sys.argv[1], encoding="utf-8").read(); out = sys.argv[2]
open(f"{out}/_index.yaml", "w").write(t[t.index('version: "1.0"'):t.index("Для продакшена")])
def block(start, name):
    i = t.index(start); j = t.index("return {", i); k = t.index("\n", j)
    open(f"{out}/{name}", "w").write(t[i:k + 1])
block('local http = require("http")\nlocal sql = require("sql")', "auth_token.lua")
block('local http = require("http")\nlocal json = require("json")', "ws_ticker.lua")
block('local logger = require("logger")\nlocal json = require("json")', "ws_handler.lua")
block('local logger = require("logger")\nlocal time = require("time")', "ticker.lua")
block('local sql = require("sql")\nlocal logger = require("logger")', "migrate.lua")
PY
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work" && MOONWIRE_LOG=info exec "${MOONWIRE_BIN:-$repo/target/release/moonwire}" run --registry "$reg" --no-watch --addr "127.0.0.1:$port" 2> "$work/server.log") &
spid=$!
for _ in $(seq 100); do grep -q "api_key=" "$work/server.log" 2>/dev/null && break; sleep 0.1; done
key=$(grep -o 'api_key=[A-Za-z0-9]*' "$work/server.log" | head -1 | cut -d= -f2)
sleep 1
line=$("$WSLOAD" --url "ws://127.0.0.1:$port/ws/ticker" -n "$N" --ramp-rate 1000 --warmup 2 --duration "$DUR" \
  --tick-ms 10 --ping --sample 1000 --connect-timeout-ms 60000 --server-pid "$spid" \
  --auth-url "http://127.0.0.1:$port/auth/token" --api-key "$key" --label "moonwire-$MODE-$N" -q 2> "$work/wsload.log" | tail -1)
echo "$line"; echo "$line" | summary
grep -E "WARN|ERROR" "$work/server.log" | grep -v "demo key" | sort | uniq -c | sort -rn | head -5 || true
