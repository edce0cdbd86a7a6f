#!/usr/bin/env bash
# System calls per request: tally (both --io paths) and nginx under the same wrk load, counted
# with `strace -c -f` on the whole server process.
#
#   bench/syscalls.sh                  # health at 1 and 64 connections, 4 s each
#   CONNS="1" DURATION=3 bench/syscalls.sh
#   BASELINE_BIN=/path/to/old/tally bench/syscalls.sh   # also an older build (rows base-...)
#
# strace slows every system call it sees, so req/s here are not benchmark numbers; the counts
# per request are what this is for (each wake-up of a sleeping core shows as kernel entries).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-1 64}
DURATION=${DURATION:-4}
PATHS=${PATHS:-uring glommio}
PORT=${PORT:-18092}
NGINX_PORT=${NGINX_PORT:-18093}
OUT=bench/out/syscalls
BASELINE_BIN=${BASELINE_BIN:-}

# shellcheck source=bench/lib.sh
. bench/lib.sh
pick_cpus
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
command -v strace >/dev/null || { echo "bench: strace is missing" >&2; exit 1; }
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/tally
HEALTH=/api/v1/system/health

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# count NAME PID URL: one wrk load per connection count with strace attached to PID.
count() {
    local name=$1 pid=$2 url=$3 c
    for c in $CONNS; do
        strace -c -f -p "$pid" -o "$OUT/$name-$c.strace" 2>/dev/null &
        local tracer=$!
        sleep 0.5
        taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"${DURATION}s" "$url" >"$OUT/$name-$c.wrk"
        kill -INT "$tracer"
        wait "$tracer" 2>/dev/null || true
        python3 - "$OUT/$name-$c.wrk" "$OUT/$name-$c.strace" "$name" "$c" <<'PY'
import re, sys
wrk, trace, name, conns = sys.argv[1:]
reqs = int(re.search(r"(\d+) requests in", open(wrk).read()).group(1))
calls = {}
for line in open(trace):
    parts = line.split()
    if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
        calls[parts[-1]] = int(parts[3])
shown = ["io_uring_enter", "recvfrom", "sendto", "epoll_wait", "membarrier", "writev", "read", "write"]
cells = " ".join(f"{k}={calls.get(k, 0) / reqs:.3f}" for k in shown if calls.get(k))
print(f"{name:<16} c={conns:<3} requests={reqs:<7} per request: {cells}")
PY
    done
}

start_tally() { # tag, bin, args...
    local tag=$1 bin=$2
    shift 2
    rm -rf "$OUT/data"
    launch_tally "$bin" "$OUT/data" "$OUT/$tag.log" "$@"
    sleep 1
}

echo "server on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU, health, ${DURATION}s per load"
for path in $PATHS; do
    start_tally "tally-$path" "$BIN" --io "$path"
    count "tally-$path" "$TALLY_PID" "http://127.0.0.1:$PORT$HEALTH"
    stop_tally
    if [ -n "$BASELINE_BIN" ]; then
        start_tally "base-$path" "$BASELINE_BIN" --io "$path"
        count "base-$path" "$TALLY_PID" "http://127.0.0.1:$PORT$HEALTH"
        stop_tally
    fi
done
if command -v nginx >/dev/null; then
    start_nginx "$NGINX_PORT" "$OUT/nginx"
    PIDS+=("$NGINX_PID")
    count nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT$HEALTH"
fi
