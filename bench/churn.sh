#!/usr/bin/env bash
# Connection churn: many short rounds, each with fresh connections, reporting the slowest
# request of every round (a stall shows as one bad round, not as a worse median).
#
#   bench/churn.sh                      # 20 rounds each: tally (both --io paths) and nginx
#   ROUNDS=10 PATHS="uring" bench/churn.sh
#   BASELINE_BIN=/path/to/old/tally bench/churn.sh   # also an older build (rows base-...)
#
# Each round is `wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency` (64 connections opened at
# its start, closed at its end) on health and on lookups; nginx answers health with a fixed
# 200 as the control. The server runs pinned to one CPU (`--cores 1`), wrk to the other. The
# summary gives, per server and workload, the rounds whose slowest request passed STALL_MS
# (default 20), the worst round, and the median of the rounds' p99 and max.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-20}
DURATION=${DURATION:-3}
CONNECTIONS=${CONNECTIONS:-64}
STALL_MS=${STALL_MS:-20}
PATHS=${PATHS:-uring glommio}
PORT=${PORT:-18090}
NGINX_PORT=${NGINX_PORT:-18091}
OUT=bench/out/churn
BASELINE_BIN=${BASELINE_BIN:-}

# shellcheck source=bench/lib.sh
. bench/lib.sh
pick_cpus
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/tally
HEALTH=/api/v1/system/health
"$BIN" sample | python3 -c 'import sys, json; [print(json.loads(l)["key"]) for l in sys.stdin]' >"$OUT/keys.txt"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# round NAME URL [wrk args...]: one wrk round; appends "NAME p99_ms max_ms" to the results.
round() {
    local name=$1 url=$2
    shift 2
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" "$@" >"$OUT/last.txt"
    python3 - "$OUT/last.txt" "$name" >>"$OUT/results.txt" <<'PY'
import re, sys
text, name = open(sys.argv[1]).read(), sys.argv[2]
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
lat = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text, re.M)
p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
reqs = re.search(r"(\d+) requests in", text)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
note = ("non-2xx=" + bad.group(1) + " " if bad else "") + (sock.group(1).strip() if sock else "")
print(name, ms(*p99.groups()), ms(*lat.groups()), reqs.group(1), note.replace(" ", "_") or "-")
PY
    tail -n 1 "$OUT/results.txt"
}

: >"$OUT/results.txt"
echo "server on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU; $ROUNDS rounds of ${DURATION}s, $CONNECTIONS fresh connections each"
echo "name p99_ms max_ms requests errors"
# Each server serves all its rounds from one start, so start-up work counts once, in round 1,
# as it would for a user who starts tally and runs wrk.
tally_rounds() { # tag, bin, args...
    local tag=$1 bin=$2
    shift 2
    launch_tally "$bin" "$OUT/data" "$OUT/$tag.log" "$@"
    for _ in $(seq 1 "$ROUNDS"); do
        round "$tag-health" "http://127.0.0.1:$PORT$HEALTH"
        round "$tag-lookup" "http://127.0.0.1:$PORT/get_value" -s bench/kv.lua -- "$OUT/keys.txt" 1
    done
    stop_tally
}
for path in $PATHS; do
    tally_rounds "tally-$path" "$BIN" --io "$path"
    if [ -n "$BASELINE_BIN" ]; then tally_rounds "base-$path" "$BASELINE_BIN" --io "$path"; fi
done
if command -v nginx >/dev/null; then
    start_nginx "$NGINX_PORT" "$OUT/nginx"
    PIDS+=("$NGINX_PID")
    for _ in $(seq 1 "$ROUNDS"); do round nginx-health "http://127.0.0.1:$NGINX_PORT$HEALTH"; done
    kill -TERM "$NGINX_PID"
    wait "$NGINX_PID" 2>/dev/null || true
fi

echo
python3 - "$OUT/results.txt" "$STALL_MS" <<'PY'
import statistics, sys
rows, stall = {}, float(sys.argv[2])
for line in open(sys.argv[1]):
    name, p99, mx, *_ = line.split()
    rows.setdefault(name, []).append((float(p99), float(mx)))
print(f"{'workload':<22} {'rounds':>6} {'>' + sys.argv[2] + 'ms':>7} {'worst_ms':>9} {'med_p99':>8} {'med_max':>8}")
for name, rs in rows.items():
    maxes = [m for _, m in rs]
    print(f"{name:<22} {len(rs):>6} {sum(m > stall for m in maxes):>7} {max(maxes):>9.2f} "
          f"{statistics.median(p for p, _ in rs):>8.2f} {statistics.median(maxes):>8.2f}")
PY
