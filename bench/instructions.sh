#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable where timing is not (a
# shared 2-core VM swings req/s by +-20% from run to run, and a busy neighbour by more). Each
# build runs once under callgrind; for every workload the counters are zeroed, ab sends a fixed
# number of requests, and the counters are dumped: the instructions of the whole tally process
# (every thread: cores, store thread, ring driver) in that window, divided by the requests.
# PostgreSQL's own work is not counted. Kernel instructions are not counted either: use
# bench/syscalls.sh for system calls per request.
#
#   bench/instructions.sh                          # this tree's release build
#   BASELINE_BIN=/path/to/old/tally bench/instructions.sh   # and an older build, side by side
#   REQUESTS=4000 WORKLOADS="health kv" bench/instructions.sh
#
# Workloads: health (GET, 1 and 16 connections), kv (POST /get_value, 1 connection), count
# (GET /api/v1/counter, 1 and 16 connections) and, not by default, counter (POST
# /api/v1/counter, each request waiting for its commit: under valgrind the store gets no
# answer to its commits within the commit timeout, with the build before the renovation too;
# not yet understood).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-4000}
WORKLOADS=${WORKLOADS:-health kv count}
PORT=${PORT:-18090}
OUT=bench/out/instructions
command -v valgrind >/dev/null || { echo "bench: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
command -v ab >/dev/null || { echo "bench: ab is missing (apt-get install apache2-utils)" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. bench/lib.sh

cargo build --release --quiet
BINS=("target/release/tally")
[ -n "${BASELINE_BIN:-}" ] && BINS+=("$BASELINE_BIN")

VG_PID=
# SIGKILL: under valgrind tally's signal thread (sigwaitinfo) does not see SIGTERM. The
# embedded PostgreSQL goes with it (it runs with the parent-death signal set).
cleanup() { [ -n "$VG_PID" ] && kill -KILL "$VG_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# Total instructions (Ir) in the newest dump of callgrind run $1.
dumped_ir() {
    local file
    file=$(ls -t "$OUT"/callgrind.out."$1"* | head -1)
    awk '/^summary:/ { print $2 }' "$file"
}

# measure NAME CONCURRENCY [ab args...]: instructions per request of NAME.
measure() {
    local name=$1 concurrency=$2
    shift 2
    # A warm-up outside the window: buffers grown, replica pages touched, statements prepared.
    ab -q -k -n 200 -c "$concurrency" "$@" >"$OUT/ab.txt" 2>&1 || { cat "$OUT/ab.txt" >&2; exit 1; }
    callgrind_control -z "$VG_PID" >/dev/null 2>&1
    ab -q -k -n "$REQUESTS" -c "$concurrency" "$@" >"$OUT/ab.txt" 2>&1 || { cat "$OUT/ab.txt" >&2; exit 1; }
    callgrind_control -d "$VG_PID" >/dev/null 2>&1
    local failed
    failed=$(awk '/^Failed requests:/ { print $3 }' "$OUT/ab.txt")
    local ir
    ir=$(dumped_ir "$VG_PID")
    printf '%-34s %-28s %12d %8s\n' "$LABEL" "$name" "$((ir / REQUESTS))" "${failed:-?}"
}

mkdir -p "$OUT"
KEY=$(python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["key"])' < <(target/release/tally sample))
printf '{"key":"%s"}' "$KEY" >"$OUT/lookup.json"
printf '{"by":1}' >"$OUT/by1.json"
printf '%-34s %-28s %12s %8s\n' build workload "Ir/request" failed
for bin in "${BINS[@]}"; do
    LABEL=$bin
    # A port of its own: the previous build may still be going away, and with SO_REUSEPORT
    # both would take connections.
    PORT=$((PORT + 1))
    rm -rf "$OUT/data" "$OUT"/callgrind.out.*
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" \
        "$bin" --listen "127.0.0.1:$PORT" --cores 1 --data-dir "$OUT/data" --log warn \
        >"$OUT/tally.log" 2>&1 &
    VG_PID=$!
    for _ in $(seq 1 600); do
        curl -fsS -o /dev/null "http://127.0.0.1:$PORT/api/v1/system/ready" 2>/dev/null && break
        sleep 0.5
    done
    url=http://127.0.0.1:$PORT
    for workload in $WORKLOADS; do
        case $workload in
            health)
                measure "health, 1 connection" 1 "$url/api/v1/system/health"
                measure "health, 16 connections" 16 "$url/api/v1/system/health"
                ;;
            kv)
                measure "get_value, 1 connection" 1 -p "$OUT/lookup.json" -T application/json "$url/get_value"
                ;;
            count)
                measure "counter GET, 1 connection" 1 "$url/api/v1/counter"
                measure "counter GET, 16 connections" 16 "$url/api/v1/counter"
                ;;
            counter)
                measure "counter POST, 1 connection" 1 -p "$OUT/by1.json" -T application/json "$url/api/v1/counter"
                measure "counter POST, 16 connections" 16 -p "$OUT/by1.json" -T application/json "$url/api/v1/counter"
                ;;
            *) echo "bench: unknown workload $workload" >&2; exit 1 ;;
        esac
    done
    kill -KILL "$VG_PID"
    wait "$VG_PID" 2>/dev/null || true
    VG_PID=
    # Its PostgreSQL stops on the parent-death signal; wait for it before the next build
    # reuses the data directory.
    for _ in $(seq 1 100); do pgrep -f "$OUT/data" >/dev/null || break; sleep 0.2; done
done
