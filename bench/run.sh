#!/usr/bin/env bash
# tally's benchmark: one command, one table.
#
#   bench/run.sh                 # every workload (about 3 minutes)
#   DURATION=5 ROUNDS=1 bench/run.sh health kv   # selected workloads: health kv counter nginx
#   bench/run.sh reload           # lookups on a RELOAD_PAIRS (10M) dataset, steady and across
#                                 # a SIGHUP reload, at a load that leaves CPU headroom (see
#                                 # reload_workload; not in the default set: ~1 GB of files)
#   bench/run.sh named            # named counters (issue 20) at CONNECTIONS_HIGH connections,
#                                 # with the single counter in the same rounds as the baseline
#                                 # (see named_workload; not in the default set). NAMED_CORES=2
#                                 # runs that server with --cores 2 on both CPUs, wrk's too
#   BASELINE_BIN=/path/to/old/tally bench/run.sh  # also runs an older build in every round
#                                                 # (rows prefixed base-), for before/after
#   BASELINE_ARGS="--io glommio" bench/run.sh   # the baseline is this build with these flags
#                                                 # (an A/B of one option; this one compares
#                                                 # tally's ring with glommio's sockets)
#
# Each workload runs ROUNDS times (default 3), the rounds interleaved, and the summary gives
# the median of each column: this machine is a VM whose neighbours make single runs swing by
# +-20%.
#
# The release binary runs pinned to one CPU (taskset, --cores 1) and wrk to another, so the two
# never share a core. For each load the server's CPU time (utime+stime of the whole process from
# /proc/PID/stat, before and after) is divided by the requests served: on a 2-core machine wrk
# itself caps req/s, and CPU per request is what tells servers apart. nginx (if installed) runs
# with the same pinning, `master_process off` and one worker, answering a fixed 200, as the
# reference for "the HTTP limit of this machine". Numbers from one run compare; across runs
# they drift with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
# The counter's batches grow with the number of requests waiting on a commit, so the counter
# and, for a like-for-like ratio, the lookup also run with this many connections.
CONNECTIONS_HIGH=${CONNECTIONS_HIGH:-256}
PORT=${PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}
OUT=bench/out
WORKLOADS=${*:-health nginx kv counter}
RELOAD_PAIRS=${RELOAD_PAIRS:-10000000}
KEYED_RETENTION=${KEYED_RETENTION:-1}
NAMES=${NAMES:-10000}
NAMED_CORES=${NAMED_CORES:-1}

# shellcheck source=bench/lib.sh
. bench/lib.sh
pick_cpus
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }

mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/tally
BASELINE_ARGS=${BASELINE_ARGS:-}
BASELINE_BIN=${BASELINE_BIN:-}
if [ -n "$BASELINE_ARGS" ] && [ -z "$BASELINE_BIN" ]; then BASELINE_BIN=$BIN; fi
TICKS=$(getconf CLK_TCK)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

ROWS=()
# Rows whose wrk script (bench/named.lua) saw an answer other than 200: the run exits 1.
NON200_ROWS=()
# load NAME PID URL [wrk args...]: runs wrk pinned to LOAD_CPU and records one table row.
load() {
    local name=$1 pid=$2 url=$3
    shift 3
    local before after log=$OUT/$name.txt
    before=$(cpu_ticks "$pid")
    taskset -c "$LOAD_CPU" wrk -t1 -c"${CONNS:-$CONNECTIONS}" -d"${DURATION}s" --latency "$url" "$@" >"$log"
    after=$(cpu_ticks "$pid")
    local row
    row=$(python3 - "$log" "$before" "$after" "$TICKS" "$name" <<'PY'
import re, sys
log, before, after, ticks, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
text = open(log).read()
reqs = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def pct(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, text, re.M)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
# bench/named.lua counts the answers by status ("statuses: 200=N 404=M", "non-200: M").
non200 = re.search(r"^non-200: (\d+)$", text, re.M)
statuses = re.search(r"^statuses:(.*)$", text, re.M)
cpu_us = (after - before) / ticks * 1e6 / max(reqs, 1)
note = []
if non200 and int(non200.group(1)) > 0:
    note.append("NOT-200=" + non200.group(1) + " (" + statuses.group(1).strip() + ")")
elif errors: note.append("non-2xx=" + errors.group(1))
if sock: note.append("socket errors: " + sock.group(1).strip())
print(f"{name:<28} {rps:>12,.0f} {pct(50):>9.3f} {pct(99):>9.3f} {cpu_us:>12.2f}  {' '.join(note)}")
PY
)
    ROWS+=("$row")
    echo "$row"
    if grep -Eq '^non-200: [1-9]' "$log"; then
        [[ " ${NON200_ROWS[*]} " == *" $name "* ]] || NON200_ROWS+=("$name")
        echo "bench: $name: $(grep '^non-200:' "$log") of $(grep -Eo '[0-9]+ requests in' "$log" | cut -d' ' -f1) answers ($(grep '^statuses:' "$log")): the row measures errors, not counting" >&2
    fi
}

start_tally() { # name, extra args...
    local name=$1
    shift
    # A baseline keeps its own data directory: an older build may keep another schema.
    launch_tally "$RUN_BIN" "$OUT/${TAG}data" "$OUT/tally-$name.log" "$@"
}

echo "server on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU, $CONNECTIONS connections, ${DURATION}s per load"
printf '%-28s %12s %9s %9s %12s\n' workload req/s p50_ms p99_ms cpu_us/req

HEALTH=/api/v1/system/health
"$BIN" sample | python3 -c 'import sys, json; [print(json.loads(l)["key"]) for l in sys.stdin]' >"$OUT/keys.txt"

# tally_workloads: every tally row, with the binary $RUN_BIN and row names prefixed $TAG.
tally_workloads() {
    if [[ " $WORKLOADS " == *" health "* || " $WORKLOADS " == *" kv "* || " $WORKLOADS " == *" counter "* ]]; then
        # shellcheck disable=SC2086 # RUN_ARGS is a list of flags
        start_tally main $RUN_ARGS
        if [[ " $WORKLOADS " == *" health "* ]]; then
            load "${TAG}tally-health" "$TALLY_PID" "http://127.0.0.1:$PORT$HEALTH"
            CONNS=1 load "${TAG}tally-health-1c" "$TALLY_PID" "http://127.0.0.1:$PORT$HEALTH"
            load "${TAG}tally-health-pipelined-16" "$TALLY_PID" "http://127.0.0.1:$PORT$HEALTH" -s bench/pipeline.lua -- 16
        fi
        if [[ " $WORKLOADS " == *" kv "* ]]; then
            load "${TAG}tally-kv-lookup" "$TALLY_PID" "http://127.0.0.1:$PORT/get_value" -s bench/kv.lua -- "$OUT/keys.txt" 1
            load "${TAG}tally-kv-lookup-pipelined-16" "$TALLY_PID" "http://127.0.0.1:$PORT/get_value" -s bench/kv.lua -- "$OUT/keys.txt" 16
            CONNS=$CONNECTIONS_HIGH load "${TAG}tally-kv-lookup-${CONNECTIONS_HIGH}c" "$TALLY_PID" "http://127.0.0.1:$PORT/get_value" -s bench/kv.lua -- "$OUT/keys.txt" 1
        fi
        if [[ " $WORKLOADS " == *" counter "* ]]; then
            load "${TAG}tally-counter-post" "$TALLY_PID" "http://127.0.0.1:$PORT/api/v1/counter" -s bench/pipeline.lua -- 1 POST
            CONNS=$CONNECTIONS_HIGH load "${TAG}tally-counter-post-${CONNECTIONS_HIGH}c" "$TALLY_PID" "http://127.0.0.1:$PORT/api/v1/counter" -s bench/pipeline.lua -- 1 POST
            curl -fsS "http://127.0.0.1:$PORT/metrics" >"$OUT/${TAG}metrics-counter.txt"
            load "${TAG}tally-counter-get" "$TALLY_PID" "http://127.0.0.1:$PORT/api/v1/counter"
        fi
        stop_tally
        if [[ " $WORKLOADS " == *" counter "* ]]; then
            # shellcheck disable=SC2086
            start_tally batch1 --max-batch 1 $RUN_ARGS
            load "${TAG}tally-counter-post-batch-1" "$TALLY_PID" "http://127.0.0.1:$PORT/api/v1/counter" -s bench/pipeline.lua -- 1 POST
            stop_tally
            # A fresh key per request, on an instance whose keys expire after KEYED_RETENTION
            # seconds (default 1): the sweep then deletes keys as fast as the load adds them,
            # the steady state of a deployment one retention old, instead of a table that only
            # grows across rounds. KEYED_RETENTION=86400 measures the filling phase.
            # shellcheck disable=SC2086
            start_tally keyed --idempotency-retention-secs "$KEYED_RETENTION" $RUN_ARGS
            CONNS=$CONNECTIONS_HIGH load "${TAG}tally-counter-post-keyed-${CONNECTIONS_HIGH}c" "$TALLY_PID" "http://127.0.0.1:$PORT/api/v1/counter" -s bench/keyed.lua
            curl -fsS "http://127.0.0.1:$PORT/metrics" >"$OUT/${TAG}metrics-keyed.txt"
            stop_tally
        fi
    fi
    if [[ " $WORKLOADS " == *" named "* ]]; then
        named_workload
    fi
}

# named_workload: named counters (issue 20, docs/benchmarks.md "Named counters and Redis"),
# every row at CONNECTIONS_HIGH connections and with bench/named.lua, whose response() hook
# counts the answers by status (a row with any but 200 is flagged and the run exits 1). The
# baseline, the single counter's POST, runs in the same rounds with the same script, so wrk's
# cost is the same in every row. Names c0..c(NAMES-1), default 10,000. The server runs with
# --cores NAMED_CORES (default 1, pinned as the rest); with NAMED_CORES>1 it may use every CPU
# this script may, wrk's included, so only ratios within that run mean anything (rows suffixed
# -Ncores). The keyed rows run on their own instance with KEYED_RETENTION, as the counter's.
named_workload() {
    local url="http://127.0.0.1:$PORT/" c=$CONNECTIONS_HIGH sfx=""
    local SERVER_CORES=$NAMED_CORES SERVER_CPUS=$SERVER_CPU
    if [ "$NAMED_CORES" != 1 ]; then
        sfx=-${NAMED_CORES}cores
        SERVER_CPUS=$(python3 -c 'import os; print(",".join(map(str, sorted(os.sched_getaffinity(0)))))')
    fi
    # Health answers before PostgreSQL is connected, and a POST then is a 503: the named rows
    # start once the server is ready (GET /api/v1/system/ready).
    # shellcheck disable=SC2086 # RUN_ARGS is a list of flags
    start_tally named $RUN_ARGS
    wait_http "http://127.0.0.1:$PORT/api/v1/system/ready"
    CONNS=$c load "${TAG}tally-named-counter-post-${c}c$sfx" "$TALLY_PID" "$url" -s bench/named.lua -- single "$NAMES"
    CONNS=$c load "${TAG}tally-named-random-${c}c$sfx" "$TALLY_PID" "$url" -s bench/named.lua -- random "$NAMES"
    CONNS=$c load "${TAG}tally-named-hot-${c}c$sfx" "$TALLY_PID" "$url" -s bench/named.lua -- hot "$NAMES"
    CONNS=$c load "${TAG}tally-named-get-${c}c$sfx" "$TALLY_PID" "$url" -s bench/named.lua -- get "$NAMES"
    curl -fsS "http://127.0.0.1:$PORT/metrics" >"$OUT/${TAG}metrics-named.txt"
    stop_tally
    # shellcheck disable=SC2086
    start_tally named-keyed --idempotency-retention-secs "$KEYED_RETENTION" $RUN_ARGS
    wait_http "http://127.0.0.1:$PORT/api/v1/system/ready"
    CONNS=$c load "${TAG}tally-named-counter-post-keyed-${c}c$sfx" "$TALLY_PID" "$url" -s bench/named.lua -- single-keyed "$NAMES"
    CONNS=$c load "${TAG}tally-named-keyed-${c}c$sfx" "$TALLY_PID" "$url" -s bench/named.lua -- keyed "$NAMES"
    stop_tally
}

# reload_workload: lookups on a RELOAD_PAIRS dataset, steady, then across a SIGHUP reload of
# the same file (docs/api.md, "Reloading the dataset"), with the binary $RUN_BIN and row names
# prefixed $TAG. The server (--cores 1) and its reload threads share SERVER_CPU (no spare CPU,
# as with the default --cores); wrk has LOAD_CPU. The load leaves CPU headroom, as a deployment
# would: each of wrk's connections pauses RELOAD_PAUSE_MS (default 1) between requests. A
# reload runs SCHED_IDLE, in the server CPU's idle time: under a saturating load
# (RELOAD_PAUSE_MS=0) it is starved until the load eases, which measures wrk, not a reload.
# The reload load starts 2 s before the SIGHUP and lasts RELOAD_DURATION (default 20 s); the
# line after it says whether the reload finished inside it, and how long the parse took and
# then the swap on every core. The reload row's p99 against the steady row's is the cost of a
# reload to clients.
reload_workload() {
    local data=$OUT/reload-$RELOAD_PAIRS.jsonl pause=${RELOAD_PAUSE_MS:-1} log=$OUT/tally-${TAG}reload.log
    if [ ! -s "$data" ]; then
        "$BIN" sample --pairs "$RELOAD_PAIRS" "$data"
        head -n 10000 "$data" | python3 -c 'import sys, json; [print(json.loads(l)["key"]) for l in sys.stdin]' >"$OUT/reload-keys.txt"
    fi
    # kv.lua, with a pause between a connection's requests (wrk's delay()).
    cat >"$OUT/kv-paced.lua" <<'LUA'
dofile("bench/kv.lua")
local kv_init, pause_ms = init, 0
function init(args)
   kv_init(args)
   pause_ms = tonumber(args[3] or "0")
end
function delay()
   return pause_ms
end
LUA
    echo "reload ($TAG${RUN_BIN}): server and reload threads on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU, $CONNECTIONS connections pausing ${pause}ms"
    # Loading 10M pairs at start-up can outlast one wait_http on a busy machine: wait twice.
    LOG_LEVEL=info start_tally "${TAG}reload" --kv-data "$data" || wait_http "http://127.0.0.1:$PORT$HEALTH"
    local url="http://127.0.0.1:$PORT/get_value" paced=(-s "$OUT/kv-paced.lua" -- "$OUT/reload-keys.txt" 1 "$pause")
    load "${TAG}tally-kv-${RELOAD_PAIRS}-steady" "$TALLY_PID" "$url" "${paced[@]}"
    (sleep 2 && kill -HUP "$TALLY_PID") &
    local hup=$!
    DURATION=${RELOAD_DURATION:-20} load "${TAG}tally-kv-${RELOAD_PAIRS}-during-reload" "$TALLY_PID" "$url" "${paced[@]}"
    wait "$hup"
    if grep -q "every core swapped" "$log"; then
        echo "  reload inside the load: $(grep "every core swapped" "$log" | tail -n 1 | sed 's/.*every core swapped/every core swapped/')"
    else
        echo "  the reload outlasted the load: the reload row does not cover all of it"
    fi
    stop_tally
}

one_round() {
    if [[ " $WORKLOADS " == *" reload "* ]]; then
        RUN_BIN=$BIN TAG="" reload_workload
        if [ -n "$BASELINE_BIN" ]; then RUN_BIN=$BASELINE_BIN TAG=base- reload_workload; fi
    fi
    RUN_BIN=$BIN RUN_ARGS="" TAG="" tally_workloads
    if [ -n "$BASELINE_BIN" ]; then
        RUN_BIN=$BASELINE_BIN RUN_ARGS=$BASELINE_ARGS TAG=base- tally_workloads
    fi

    if [[ " $WORKLOADS " == *" nginx "* ]]; then
        if command -v nginx >/dev/null; then
            start_nginx "$NGINX_PORT" "$OUT/nginx"
            PIDS+=("$NGINX_PID")
            load nginx-fixed-200 "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT$HEALTH"
            CONNS=1 load nginx-fixed-200-1c "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT$HEALTH"
            load nginx-fixed-200-pipelined-16 "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT$HEALTH" -s bench/pipeline.lua -- 16
            kill -TERM "$NGINX_PID"
            wait "$NGINX_PID" 2>/dev/null || true
        else
            echo "bench: nginx not installed (apt-get install nginx-light); no reference rows" >&2
        fi
    fi

}

for round in $(seq 1 "$ROUNDS"); do
    echo "-- round $round of $ROUNDS"
    one_round
done

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, DURATION=${DURATION}s, CONNECTIONS=$CONNECTIONS) =="
printf '%s\n' "${ROWS[@]}" >"$OUT/rows.txt"
NON200="${NON200_ROWS[*]}" python3 - "$OUT/rows.txt" <<'PY' | tee "$OUT/summary.txt"
import os, statistics, sys
non200 = set(os.environ["NON200"].split())
order, runs = [], {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 5:
        continue
    if f[0] not in runs:
        order.append(f[0])
        runs[f[0]] = []
    runs[f[0]].append([float(f[1].replace(",", "")), float(f[2]), float(f[3]), float(f[4])])
print(f"{'workload (median of runs)':<28} {'req/s':>12} {'p50_ms':>9} {'p99_ms':>9} {'cpu_us/req':>12} runs")
for name in order:
    cols = list(zip(*runs[name]))
    m = [statistics.median(c) for c in cols]
    # wrk reports no latency percentiles for pipelined batches beyond the median (it prints 0).
    p99 = f"{m[2]:>9.3f}" if m[2] > 0 else f"{'n/a':>9}"
    flag = "  NOT-200 answers (see the rounds above)" if name in non200 else ""
    print(f"{name:<28} {m[0]:>12,.0f} {m[1]:>9.3f} {p99} {m[3]:>12.2f} {len(runs[name])}{flag}")
PY
NON200="${NON200_ROWS[*]}" python3 - "$OUT/summary.txt" "$OUT/metrics-counter.txt" "$OUT/metrics-named.txt" <<'PY'
import sys, os
non200 = set(os.environ["NON200"].split())
rows = {}
for line in list(open(sys.argv[1]))[1:]:
    f = line.split()
    if len(f) >= 5:
        rows[f[0]] = (float(f[1].replace(",", "")), float(f[4]), float(f[2]))
def ratio(a, b, i, label):
    if a in non200 or b in non200:
        print(f"{label:<48} n/a: answers other than 200")
    elif a in rows and b in rows and rows[b][i] > 0:
        print(f"{label:<48} {rows[a][i] / rows[b][i]:.2f}")
print()
ratio("tally-health", "nginx-fixed-200", 1, "tally/nginx cpu per request (health)")
ratio("tally-health", "nginx-fixed-200", 0, "tally/nginx req/s (health)")
ratio("tally-health-1c", "nginx-fixed-200-1c", 1, "tally/nginx cpu per request (health, 1 connection)")
ratio("tally-health-1c", "nginx-fixed-200-1c", 0, "tally/nginx req/s (health, 1 connection)")
ratio("tally-health-1c", "nginx-fixed-200-1c", 2, "tally/nginx p50 latency (health, 1 connection)")
ratio("tally-health-pipelined-16", "nginx-fixed-200-pipelined-16", 1, "tally/nginx cpu per request (pipelined 16)")
ratio("tally-health-pipelined-16", "nginx-fixed-200-pipelined-16", 0, "tally/nginx req/s (pipelined 16)")
ratio("tally-kv-lookup", "nginx-fixed-200", 1, "kv lookup / nginx fixed-200 cpu per request")
ratio("tally-counter-post", "tally-kv-lookup", 0, "counter POST / kv lookup req/s")
ratio("tally-counter-post", "tally-kv-lookup", 1, "counter POST / kv lookup cpu per request")
high = [k for k in rows if k.startswith("tally-counter-post-") and k.endswith("c") and "keyed" not in k]
for k in high:
    kv = "tally-kv-lookup-" + k.rsplit("-", 1)[1]
    ratio(k, kv, 0, f"counter POST / kv lookup req/s ({k.rsplit('-', 1)[1]})")
    ratio(k, kv, 1, f"counter POST / kv lookup cpu per request ({k.rsplit('-', 1)[1]})")
ratio("tally-counter-post-keyed-256c", "tally-counter-post-256c", 0, "keyed / unkeyed counter POST req/s (256c)")
ratio("tally-counter-post-keyed-256c", "tally-counter-post-256c", 1, "keyed / unkeyed counter POST cpu per request (256c)")
ratio("tally-counter-post", "tally-counter-post-batch-1", 0, "counter POST batched / one transaction each")
# Named counters (issue 20): each against the single counter's POST in the same rounds, with
# the same wrk script (bench/named.lua); the targets are the issue's.
def target(a, b, label, ok):
    if a in non200 or b in non200:
        print(f"{label:<60} n/a: answers other than 200")
    elif a in rows and b in rows and rows[b][0] > 0:
        r = rows[a][0] / rows[b][0]
        print(f"{label:<60} {r:.2f}  {'meets' if ok(r) else 'MISSES'} the target")
for n in [k[len("tally-named-random-"):] for k in rows if k.startswith("tally-named-random-")]:
    post, keyed = f"tally-named-counter-post-{n}", f"tally-named-counter-post-keyed-{n}"
    target(f"tally-named-random-{n}", post, f"named random / counter POST req/s ({n}, target >= 0.8)", lambda r: r >= 0.8)
    target(f"tally-named-hot-{n}", post, f"named hot / counter POST req/s ({n}, target 0.95-1.05)", lambda r: 0.95 <= r <= 1.05)
    target(f"tally-named-keyed-{n}", f"tally-named-random-{n}", f"named keyed / unkeyed req/s ({n}, target >= 0.7)", lambda r: r >= 0.7)
    target(keyed, post, f"counter keyed / unkeyed req/s, named.lua ({n}, target >= 0.7)", lambda r: r >= 0.7)
    ratio(f"tally-named-random-{n}", post, 1, f"named random / counter POST cpu per request ({n})")
    ratio(f"tally-named-hot-{n}", post, 1, f"named hot / counter POST cpu per request ({n})")
target("tally-counter-post-keyed-256c", "tally-counter-post-256c", "keyed / unkeyed counter POST req/s (256c, target >= 0.7)", lambda r: r >= 0.7)
# The same load with and without named.lua's response() hook (`bench/run.sh counter named`).
ratio("tally-named-counter-post-256c", "tally-counter-post-256c", 0, "counter POST req/s, named.lua / pipeline.lua (256c)")
if "tally-counter-post" in rows:
    print(f"{'seed counter API (published, other hardware)':<48} 4,630 req/s -> tally {rows['tally-counter-post'][0] / 4630:,.0f}x")
if "tally-kv-lookup" in rows:
    print(f"{'seed KV server (published, other hardware)':<48} 100 req/s -> tally {rows['tally-kv-lookup'][0] / 100:,.0f}x")
for base in [k for k in rows if k.startswith("base-")]:
    ratio(base[len("base-"):], base, 1, f"this/baseline cpu per request ({base[len('base-tally-'):]})")
    ratio(base[len("base-"):], base, 0, f"this/baseline req/s ({base[len('base-tally-'):]})")
# The baseline against nginx too (with BASELINE_ARGS="--io glommio": glommio's sockets).
ratio("base-tally-health", "nginx-fixed-200", 1, "baseline/nginx cpu per request (health)")
ratio("base-tally-health-1c", "nginx-fixed-200-1c", 1, "baseline/nginx cpu per request (health, 1 connection)")
ratio("base-tally-kv-lookup", "nginx-fixed-200", 1, "baseline kv lookup / nginx fixed-200 cpu per request")
m = sys.argv[2]
if os.path.exists(m):
    vals = {}
    for line in open(m):
        if line.startswith(("tally_counter_batch_size_sum", "tally_counter_batch_size_count", "tally_counter_commit_seconds_sum", "tally_counter_commit_seconds_count")):
            k, v = line.split()
            vals[k] = float(v)
    if vals.get("tally_counter_batch_size_count"):
        print(f"{'average counter batch (increments/transaction)':<48} {vals['tally_counter_batch_size_sum'] / vals['tally_counter_batch_size_count']:.1f}")
        print(f"{'average commit round trip (ms)':<48} {1000 * vals['tally_counter_commit_seconds_sum'] / vals['tally_counter_commit_seconds_count']:.2f}")
# The named instance's metrics after its last round (this run's, if it ran named rows).
m = sys.argv[3]
if os.path.exists(m) and any(k.startswith("tally-named-") for k in rows):
    vals = {}
    for line in open(m):
        f = line.split()
        if len(f) == 2 and f[0].startswith("tally_named_"):
            vals[f[0]] = float(f[1])
    if vals.get("tally_named_batch_size_count"):
        print(f"{'named: increments / names a transaction (random, hot)':<48} {vals.get('tally_named_batch_size_sum', 0) / vals['tally_named_batch_size_count']:.1f} / {vals.get('tally_named_batch_names_sum', 0) / vals['tally_named_batch_size_count']:.1f}")
    reads = vals.get("tally_named_reads_cached_total", 0) + vals.get("tally_named_reads_queried_total", 0)
    if reads:
        print(f"{'named: GETs answered from memory / all GETs':<48} {vals.get('tally_named_reads_cached_total', 0) / reads:.2f}")
PY
if [ "${#NON200_ROWS[@]}" -gt 0 ]; then
    echo "bench: answers other than 200 in: ${NON200_ROWS[*]} (bench/out/<row>.txt has the statuses)" >&2
    exit 1
fi
