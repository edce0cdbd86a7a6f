#!/usr/bin/env bash
# Counter POST latency on an idle server and beside a flood of pipelined requests: how long the
# store thread's replies wait for a core that is busy serving (docs/architecture.md,
# "One event loop per core"). tally --cores 1 on CPU 0, wrk and the POST client on CPU 1.
#
#   bench/post_under_flood.sh               # --io uring (IO=glommio for glommio's sockets)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
PORT=${PORT:-18086}
IO=${IO:-uring}
BIN=${BIN:-target/release/tally}   # BIN=/path/to/old/tally measures another build
DURATION=${DURATION:-20}
pick_cpus
command -v wrk >/dev/null || { echo "post_under_flood: wrk is missing (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet
DATA=$(mktemp -d)
chmod 777 "$DATA"
PID=
WRK=
cleanup() {
    if [ -n "$WRK" ]; then kill "$WRK" 2>/dev/null || true; fi
    if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$DATA"
}
trap cleanup EXIT
taskset -c "$SERVER_CPU" "$BIN" --listen "127.0.0.1:$PORT" --cores 1 --io "$IO" \
    --data-dir "$DATA" --log warn >"$DATA/tally.log" 2>&1 &
PID=$!
wait_http "http://127.0.0.1:$PORT/api/v1/system/health"
echo -n "idle:  "
taskset -c "$LOAD_CPU" python3 bench/post_latency.py "$PORT" 100
taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${DURATION}s" -s bench/pipeline.lua \
    "http://127.0.0.1:$PORT/api/v1/system/health" -- 16 >"$DATA/wrk.txt" &
WRK=$!
sleep 1
echo -n "flood: "
taskset -c "$LOAD_CPU" python3 bench/post_latency.py "$PORT" 300
wait "$WRK"
WRK=
grep "Requests/sec" "$DATA/wrk.txt"
