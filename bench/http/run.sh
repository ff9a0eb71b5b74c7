#!/usr/bin/env bash
# HTTP benchmark (issue 3): POST /auth/token with the demo key and a static 2 KB file on
# moonwire, against a bare hyper handler, at 64 connections with wrk, in one run.
#   bash bench/http/run.sh [DURATION_S]
# Env: MOONWIRE_BIN=path (another moonwire binary; the baseline is still built here).
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10}
CONNS=64
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin moonwire --example bare_hyper
BIN=$(realpath "${MOONWIRE_BIN:-target/release/moonwire}")

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cp -r registry scripts public "$work/"
# Every request mints a token that lives an hour: give the token store room for the whole run.
python3 - "$work/registry/_index.yaml" <<'PY'
import sys
p = sys.argv[1]; s = open(p).read()
s = s.replace("    kind: store.memory\n", "    kind: store.memory\n    max_size: 10000000\n", 1)
open(p, "w").write(s)
PY
head -c 2048 /dev/urandom | base64 -w 0 | head -c 2048 > "$work/public/bench-2k.txt"

(cd "$work" && MOONWIRE_LOG=info exec "$BIN" run --no-watch --addr 127.0.0.1:0 2> "$work/moonwire.log") &
pids+=($!)
./target/release/examples/bare_hyper 127.0.0.1:0 2> "$work/bare.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q "api_key=" "$work/moonwire.log" 2>/dev/null && grep -q "addr=" "$work/bare.log" 2>/dev/null && break
  sleep 0.1
done
mw=$(grep -o 'addr=127.0.0.1:[0-9]*' "$work/moonwire.log" | head -1 | cut -d= -f2)
bare=$(grep -o 'addr=127.0.0.1:[0-9]*' "$work/bare.log" | head -1 | cut -d= -f2)
key=$(grep -o 'api_key=[A-Za-z0-9]*' "$work/moonwire.log" | head -1 | cut -d= -f2)
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"api_key":"$key"}'
wrk.headers["Content-Type"] = "application/json"
LUA

run() { # name url [script]
  local out
  if [ -n "${3:-}" ]; then out=$(wrk -t2 -c$CONNS -d${DUR}s --latency -s "$3" "$2"); else out=$(wrk -t2 -c$CONNS -d${DUR}s --latency "$2"); fi
  local rps p99 errors
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errors=$(echo "$out" | grep -E "Non-2xx|Socket errors" | tr "\n" " " || true)
  printf "%-28s %12s req/s   p99 %8s   %s\n" "$1" "$rps" "$p99" "$errors"
  echo "$rps" > "$work/$1.rps"
}
echo "wrk -t2 -c$CONNS -d${DUR}s, $(nproc) cores, load generator on the same machine"
run bare_hyper_json "http://$bare/"
run moonwire_auth_token "http://$mw/auth/token" "$work/post.lua"
run moonwire_static_2k "http://$mw/bench-2k.txt"
python3 - "$work" <<'PY'
import sys
w = sys.argv[1]
r = lambda n: float(open(f"{w}/{n}.rps").read())
b = r("bare_hyper_json")
print(f"auth_token / bare = {r('moonwire_auth_token') / b:.2f}   (target >= 0.25)")
print(f"static_2k  / bare = {r('moonwire_static_2k') / b:.2f}   (target >= 0.60)")
PY
