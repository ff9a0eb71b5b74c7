# Sourced by run.sh and memory.sh from the repo root: copies ../shared/bench (the load tool and
# the peer servers) into target/bench-tools, builds wsload there, raises the open-file limit
# for thousands of sockets. Sets $shared, $tools and $WSLOAD.
shared=${SHARED:-$PWD/../shared}
tools=$PWD/target/bench-tools
mkdir -p "$tools"
[ -d "$tools/bench" ] || cp -r "$shared/bench" "$tools/bench"
chmod -R u+w "$tools/bench"
WSLOAD=$tools/bench/wsload/target/release/wsload
[ -x "$WSLOAD" ] || (cd "$tools/bench/wsload" && cargo build --release --quiet)
ulimit -n "$(ulimit -Hn)"

# Stops the server started as $spid: SIGTERM, up to 10 s for its graceful shutdown (it closes
# every connection with 1001), then SIGKILL. Never fails, so an EXIT trap runs to its end.
stop_server() {
  [ -n "${spid:-}" ] || return 0
  kill -TERM "$spid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$spid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$spid" 2>/dev/null || true
}
