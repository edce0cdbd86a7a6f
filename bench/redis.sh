#!/usr/bin/env bash
# Durable increments: Redis (fsync per write) beside tally's named counters, in one run.
#
#   bench/redis.sh                          # 3 interleaved rounds, medians (~1.5 minutes)
#   DURATION=5 ROUNDS=1 bench/redis.sh      # quicker
#   TALLY_MODE=single bench/redis.sh        # tally's single counter instead of named ones
#
# Starts its own redis-server (Debian: apt-get install -y redis-server redis-tools) on
# 127.0.0.1:REDIS_PORT in a temporary directory, with `--appendonly yes --appendfsync always
# --save ''`: every write is in the append-only file and fdatasync'ed before its reply is sent
# (see the check at the end). It runs pinned to the server CPU (bench/lib.sh's pick_cpus), and
# redis-benchmark to the load CPU: `INCR counter:__rand_int__` with -r NAMES (10,000 keys at
# random), CONNECTIONS (256) clients, no pipelining (-P 1), REDIS_REQUESTS requests (default:
# DURATION seconds' worth at the rate of a 20,000-request warm-up).
#
# tally runs with the same pinning as bench/run.sh (--cores 1 on the server CPU, its embedded
# PostgreSQL there too, wrk on the load CPU): the named-random load of bench/run.sh named
# (POST /api/v1/counters/c<i>, i among NAMES at random, CONNECTIONS connections, DURATION
# seconds), after a 2 s warm-up that creates the names. Both sides are durable per reply.
#
# After the rounds, strace counts redis's fdatasync calls against its INCRs, under the same
# load (numbers of that phase are not in the table: strace slows redis), and shows the order
# of writes and fdatasyncs for a few INCRs on one connection.
#
# cpu_us/req is the server process's CPU time per request: redis's includes its fdatasync;
# tally's leaves out PostgreSQL's (which does the commits), so it does not compare across the
# two. Compare req/s and latency.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-256}
NAMES=${NAMES:-10000}
PORT=${PORT:-18080}
REDIS_PORT=${REDIS_PORT:-18379}
REDIS_REQUESTS=${REDIS_REQUESTS:-}
TALLY_MODE=${TALLY_MODE:-random}
OUT=bench/out/redis

# shellcheck source=bench/lib.sh
. bench/lib.sh
pick_cpus
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || {
        echo "bench: $tool is missing (apt-get install -y redis-server redis-tools)" >&2
        exit 1
    }
done
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }

mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/tally
TICKS=$(getconf CLK_TCK)
REDIS_DIR=$(mktemp -d /tmp/tally-bench-redis.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$REDIS_DIR"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
# incr_calls: "calls failed_calls" of INCR so far (INFO commandstats).
incr_calls() {
    rcli INFO commandstats | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_incr:/ { for (i = 2; i < NF; i += 2) v[$i] = $(i + 1); print v["calls"] + 0, v["failed_calls"] + 0; f = 1 }
                       END { if (!f) print 0, 0 }'
}
redis_bench() { # N CLIENTS: the INCR load, pinned to LOAD_CPU, CSV on stdout
    taskset -c "$LOAD_CPU" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$1" -c "$2" \
        -r "$NAMES" -P 1 --csv INCR 'counter:__rand_int__'
}

# redis-server, pinned to the server CPU, durable per write.
taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" \
    --appendonly yes --appendfsync always --save '' --daemonize no --maxclients 10000 \
    --logfile "$REDIS_DIR/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 1 100); do
    [ "$(rcli PING 2>/dev/null)" = PONG ] && break
    sleep 0.1
done
[ "$(rcli PING 2>/dev/null)" = PONG ] || { echo "bench: redis-server did not come up ($REDIS_DIR/redis.log)" >&2; cat "$REDIS_DIR/redis.log" >&2; exit 1; }
CONFIG="appendonly $(rcli CONFIG GET appendonly | tail -n 1), appendfsync $(rcli CONFIG GET appendfsync | tail -n 1), save '$(rcli CONFIG GET save | tail -n 1)'"
echo "redis: $(redis-server --version | cut -d' ' -f1-3), $(redis-benchmark --version); CONFIG GET: $CONFIG"
[ "$CONFIG" = "appendonly yes, appendfsync always, save ''" ] || {
    echo "bench: redis is not configured to fsync every write ($CONFIG)" >&2
    exit 1
}

launch_tally "$BIN" "$OUT/data" "$OUT/tally.log"
# Health answers before PostgreSQL is connected (a POST then is a 503): wait until ready.
wait_http "http://127.0.0.1:$PORT/api/v1/system/ready"
TALLY_URL="http://127.0.0.1:$PORT/"
TALLY_ROW=tally-named-$TALLY_MODE-${CONNECTIONS}c
[ "$TALLY_MODE" = single ] && TALLY_ROW=tally-counter-post-${CONNECTIONS}c

# Warm-ups: the keys and names exist before the rounds (the rows measure increments of
# existing counters), and REDIS_REQUESTS follows redis's rate here.
warm=$(redis_bench 20000 "$CONNECTIONS" | tail -n 1 | cut -d, -f2 | tr -d '"')
REDIS_REQUESTS=${REDIS_REQUESTS:-$(python3 -c "print(max(20000, int(float('$warm') * $DURATION)))")}
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d2s "$TALLY_URL" -s bench/named.lua -- "$TALLY_MODE" "$NAMES" >"$OUT/warm-up.txt"
echo "server on CPU $SERVER_CPU, load on CPU $LOAD_CPU, $CONNECTIONS connections, $NAMES keys;" \
    "redis $REDIS_REQUESTS requests a round (warm-up: $warm req/s), tally ${DURATION}s"
printf '%-28s %12s %9s %9s %12s\n' row req/s p50_ms p99_ms cpu_us/req

ROWS=()
FAILED=()
row() { # NAME RPS P50 P99 CPU_US NOTE
    local line
    line=$(printf '%-28s %12.0f %9.3f %9.3f %12.2f  %s' "$@")
    ROWS+=("$line")
    echo "$line"
}

redis_row() {
    local log=$OUT/redis-incr-${CONNECTIONS}c.csv before after calls0 calls1 fields
    read -r calls0 _ < <(incr_calls)
    before=$(cpu_ticks "$REDIS_PID")
    redis_bench "$REDIS_REQUESTS" "$CONNECTIONS" >"$log"
    after=$(cpu_ticks "$REDIS_PID")
    read -r calls1 failed < <(incr_calls)
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    fields=$(python3 - "$log" "$before" "$after" "$TICKS" "$REDIS_REQUESTS" <<'PY'
import csv, sys
log, before, after, ticks, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = list(csv.DictReader(open(log)))[-1]
print(r["rps"], r["p50_latency_ms"], r["p99_latency_ms"], (after - before) / ticks * 1e6 / n)
PY
)
    local note=""
    if [ $((calls1 - calls0)) -ne "$REDIS_REQUESTS" ] || [ "$failed" -ne 0 ]; then
        note="INCRs counted by redis: $((calls1 - calls0)) of $REDIS_REQUESTS, $failed failed in all"
        [[ " ${FAILED[*]} " == *" redis-incr-${CONNECTIONS}c "* ]] || FAILED+=("redis-incr-${CONNECTIONS}c")
    fi
    # shellcheck disable=SC2086 # four numbers
    row "redis-incr-${CONNECTIONS}c" $fields "$note"
}

tally_row() {
    local log=$OUT/$TALLY_ROW.txt before after fields
    before=$(cpu_ticks "$TALLY_PID")
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$TALLY_URL" \
        -s bench/named.lua -- "$TALLY_MODE" "$NAMES" >"$log"
    after=$(cpu_ticks "$TALLY_PID")
    fields=$(python3 - "$log" "$before" "$after" "$TICKS" <<'PY'
import re, sys
log, before, after, ticks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
text = open(log).read()
reqs = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def pct(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, text, re.M)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)] if m else float("nan")
print(rps, pct(50), pct(99), (after - before) / ticks * 1e6 / max(reqs, 1))
PY
)
    local note=""
    if grep -Eq '^non-200: [1-9]' "$log"; then
        note="NOT-200: $(grep '^statuses:' "$log")"
        [[ " ${FAILED[*]} " == *" $TALLY_ROW "* ]] || FAILED+=("$TALLY_ROW")
    fi
    # shellcheck disable=SC2086
    row "$TALLY_ROW" $fields "$note"
}

for round in $(seq 1 "$ROUNDS"); do
    echo "-- round $round of $ROUNDS"
    redis_row
    tally_row
done

# fdatasync per INCR, under the same load, strace attached (-c: counts only).
read -r calls0 _ < <(incr_calls)
strace -c -f -p "$REDIS_PID" -o "$OUT/redis-strace-c.txt" 2>/dev/null &
STRACE_PID=$!
sleep 0.5
redis_bench 20000 "$CONNECTIONS" >/dev/null
read -r calls1 _ < <(incr_calls)
kill -INT "$STRACE_PID"
wait "$STRACE_PID" 2>/dev/null || true
SYNCS=$(awk '$NF == "fdatasync" || $NF == "fsync" { n += $4 } END { print n + 0 }' "$OUT/redis-strace-c.txt")
# The order for a few INCRs on one connection: the AOF write, fdatasync, then the reply.
strace -f -tt -e trace=write,fdatasync,fsync -p "$REDIS_PID" -o "$OUT/redis-strace-order.txt" 2>/dev/null &
STRACE_PID=$!
sleep 0.5
taskset -c "$LOAD_CPU" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INCR fsync-check >/dev/null
taskset -c "$LOAD_CPU" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INCR fsync-check >/dev/null
sleep 0.2
kill -INT "$STRACE_PID"
wait "$STRACE_PID" 2>/dev/null || true

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $CONNECTIONS connections, $NAMES keys, medians of $ROUNDS) =="
printf '%s\n' "${ROWS[@]}" >"$OUT/rows.txt"
FAILED_ROWS="${FAILED[*]}" python3 - "$OUT/rows.txt" <<'PY' | tee "$OUT/summary.txt"
import os, statistics, sys
failed = set(os.environ["FAILED_ROWS"].split())
order, runs = [], {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] not in runs:
        order.append(f[0])
        runs[f[0]] = []
    runs[f[0]].append([float(x) for x in f[1:5]])
print(f"{'durable increments':<28} {'req/s':>12} {'p50_ms':>9} {'p99_ms':>9} {'cpu_us/req':>12} runs")
med = {}
for name in order:
    med[name] = [statistics.median(c) for c in zip(*runs[name])]
    m = med[name]
    flag = "  FAILED (see the rounds above)" if name in failed else ""
    print(f"{name:<28} {m[0]:>12,.0f} {m[1]:>9.3f} {m[2]:>9.3f} {m[3]:>12.2f} {len(runs[name])}{flag}")
if failed:
    print("\nno ratios: a row failed")
elif len(order) == 2 and med[order[0]][0] > 0:
    r, t = med[order[0]], med[order[1]]
    print(f"\n{'tally / redis req/s':<28} {t[0] / r[0]:>12.2f}\n{'tally / redis p99':<28} {t[2] / r[2]:>12.2f}")
PY
echo "redis fsync check: CONFIG GET $CONFIG; with strace -c attached, $((calls1 - calls0)) INCRs" \
    "from $CONNECTIONS clients, $SYNCS fdatasync/fsync calls ($(python3 -c "print(f'{$((calls1 - calls0)) / max($SYNCS, 1):.1f}')") INCRs each);" \
    "order on one connection ($OUT/redis-strace-order.txt):"
grep -E 'write\(|fdatasync\(|fsync\(' "$OUT/redis-strace-order.txt" | grep -v 'resumed' | sed 's/^/  /' | head -n 12
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "bench: failed rows (answers other than 200, or INCRs redis did not count): ${FAILED[*]}" >&2
    exit 1
fi
