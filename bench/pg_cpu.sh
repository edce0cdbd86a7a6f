#!/usr/bin/env bash
# Where a counter increment's CPU goes: tally's process and its embedded PostgreSQL's, per
# request, for the loads of bench/named.lua.
#
#   bench/pg_cpu.sh                      # single hot random (the modes of bench/named.lua)
#   DURATION=8 bench/pg_cpu.sh random keyed
#
# tally (release, --cores 1) and its embedded cluster run pinned to the server CPU, wrk to the
# load CPU (bench/lib.sh's pick_cpus), 256 connections, NAMES (10,000) names. For each mode,
# after a 2 s warm-up: the CPU time (utime+stime from /proc) of tally and of every process of
# its cluster (the postmaster and its children: backends, WAL writer, checkpointer...) over
# DURATION seconds, divided by the requests served; voluntary context switches of tally's
# threads per request; and increments per transaction (tally_*_batch_size). Not a table of the
# benchmark: it says which side of the wire a workload's cost is on (docs/benchmarks.md,
# "Named counters and Redis").
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
NAMES=${NAMES:-10000}
PORT=${PORT:-18090}
OUT=bench/out/pg_cpu
MODES=${*:-single hot random}

# shellcheck source=bench/lib.sh
. bench/lib.sh
pick_cpus
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
mkdir -p "$OUT"
cargo build --release --quiet
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
launch_tally target/release/tally "$OUT/data" "$OUT/tally.log"
url=http://127.0.0.1:$PORT
until curl -fs "$url/api/v1/system/ready" >/dev/null; do sleep 0.2; done
data_dir=$(realpath "$OUT/data")

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() {
    local pm
    pm=$(pgrep -f "postgres -D $data_dir/pg" | head -1)
    for p in $pm $(pgrep -P "$pm"); do ticks "$p"; done | awk '{s += $1} END {print s + 0}'
}
switches() {
    cat /proc/"$TALLY_PID"/task/*/status | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s}'
}
batches() {
    curl -fsS "$url/metrics" | awk '/^tally_(named|counter)_batch_size_(sum|count)/ {
        if ($1 ~ /_sum$/) s += $2; else n += $2 } END {print s + 0, n + 0}'
}

printf '%-8s %10s %14s %11s %10s %8s\n' mode requests tally_us/req pg_us/req ctxsw/req batch
for mode in $MODES; do
    taskset -c "$LOAD_CPU" wrk -t1 -c256 -d2s "$url" -s bench/named.lua -- "$mode" "$NAMES" >/dev/null
    c0=$(switches); read -r b0 n0 < <(batches)
    t0=$(ticks "$TALLY_PID"); p0=$(pg_ticks)
    taskset -c "$LOAD_CPU" wrk -t1 -c256 -d"${DURATION}s" "$url" -s bench/named.lua -- "$mode" "$NAMES" >"$OUT/wrk-$mode.txt"
    t1=$(ticks "$TALLY_PID"); p1=$(pg_ticks)
    c1=$(switches); read -r b1 n1 < <(batches)
    n=$(grep -oP '\d+(?= requests in)' "$OUT/wrk-$mode.txt")
    python3 - "$mode" "$n" "$((t1 - t0))" "$((p1 - p0))" "$((c1 - c0))" "$((b1 - b0))" "$((n1 - n0))" "$(getconf CLK_TCK)" <<'PY'
import sys
mode, n, t, p, c, b, k, hz = sys.argv[1], *map(int, sys.argv[2:])
us = 1e6 / hz / max(n, 1)
print(f"{mode:<8} {n:>10} {t * us:>14.1f} {p * us:>11.1f} {c / max(n, 1):>10.3f} {b / max(k, 1):>8.1f}")
PY
done
