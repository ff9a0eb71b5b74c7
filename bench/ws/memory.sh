#!/usr/bin/env bash
# Memory per idle authenticated WebSocket connection (issue 4): the project's app with its
# ticker slowed to one tick an hour, so connections only get the welcome and one snapshot and
# then sit idle. Prints the server's VmRSS before any client, with N idle clients, and the
# difference per connection (the handler process and the relay's connection process included).
#   bash bench/ws/memory.sh [N]
# NO_HANDLER=1 relays every connection to the ticker instead of spawning a ws_handler, which
# measures the connection's own share (relay task, socket, WebSocket state, client process).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
N=${1:-5000}
. bench/ws/tools.sh
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin moonwire
work=$(mktemp -d)
spid=""
cleanup() { stop_server; [ -z "${KEEP_LOG:-}" ] || cp "$work/server.log" "$KEEP_LOG"; rm -rf "$work"; }
trap cleanup EXIT
cp -r registry scripts public "$work/"
sed -i 's/^local TICK = "10ms"/local TICK = "1h"/' "$work/scripts/ticker.lua"
[ -z "${NO_HANDLER:-}" ] || sed -i 's/local pid, err = process.spawn("app:ws_handler", "app:processes", user_id, actor:meta().user_id)/local pid, err = process.registry.lookup("ticker")/' "$work/scripts/ws_ticker.lua"
grep -q 'local TICK = "1h"' "$work/scripts/ticker.lua"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work" && MOONWIRE_LOG=${MOONWIRE_LOG:-warn} exec "$repo/target/release/moonwire" run --no-watch --addr "127.0.0.1:$port" 2> "$work/server.log") &
spid=$!
for _ in $(seq 100); do [ -s "$work/data/auth.db" ] && curl -s -o /dev/null "http://127.0.0.1:$port/api/ticker" && break; sleep 0.1; done
sleep 1
key=$(sqlite3 "$work/data/auth.db" "SELECT api_key FROM api_keys WHERE user_id='demo'" 2>/dev/null || python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT api_key FROM api_keys WHERE user_id='demo'\").fetchone()[0])" "$work/data/auth.db")
rss() { awk '/VmRSS/ {print $2}' "/proc/$spid/status"; }
before=$(rss)
line=$("$WSLOAD" --url "ws://127.0.0.1:$port/ws/ticker" -n "$N" --ramp-rate 2000 --warmup 3 --duration 3 \
  --tick-ms 3600000 --connect-timeout-ms 60000 --server-pid "$spid" \
  --auth-url "http://127.0.0.1:$port/auth/token" --api-key "$key" -q 2> "$work/wsload.log" | tail -1)
python3 - "$before" "$N" "$line" <<'PY'
import json, sys
before_kb, n, r = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
connected = r["clients_connected"]
during_mb = r["server"]["rss_mb_start"]
per = (during_mb * 1024 - before_kb) / max(connected, 1)
print(f"clients={connected}  rss_idle_mb={before_kb/1024:.1f}  rss_with_clients_mb={during_mb:.1f}  kb_per_connection={per:.2f}  (target <= 16)")
PY
