#!/usr/bin/env bash
# Hot-reload latency benchmark (issue 5): the app plus registry/bench/ (a GET /bench/version
# handler) under `moonwire run` with watching on; 50 times, rewrite the handler and poll the
# endpoint every 2 ms until it answers the new version. Prints p50/p95/max of write -> answer.
#   bash bench/reload/run.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-50}
cargo build --release --quiet --bin moonwire

work=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cp -r registry scripts public "$work/"
cp -r bench/reload/registry "$work/registry/bench"

(cd "$work" && MOONWIRE_LOG=warn,moonwire=info exec "$OLDPWD/target/release/moonwire" run --addr 127.0.0.1:0 2> "$work/moonwire.log") &
pid=$!
for _ in $(seq 200); do
  grep -q "watching for changes" "$work/moonwire.log" 2>/dev/null && break
  sleep 0.05
done
addr=$(grep -o 'addr=127.0.0.1:[0-9]*' "$work/moonwire.log" | head -1 | cut -d= -f2)
echo "moonwire release, $(nproc) cores, $N saves (alternating rename-over and in-place), poll every 2 ms"
python3 bench/reload/measure.py "$addr" "$work/registry/bench/version.lua" "$N" "$work/moonwire.log"
