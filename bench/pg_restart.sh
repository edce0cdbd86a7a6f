#!/usr/bin/env bash
# PostgreSQL restarted under load: how many POSTs are not answered 200.
#
#   bench/pg_restart.sh                # pg_ctl restart -m fast, then -m immediate
#   MODES=fast DURATION=20 bench/pg_restart.sh
#   DOWN_SECS=3 bench/pg_restart.sh    # pg_ctl stop -m MODE, 3 s down, pg_ctl start
#
# For each mode: tally on its embedded PostgreSQL (a fresh data directory under bench/out),
# default commit timeout, on 127.0.0.1; two wrk loads for DURATION seconds (default 20), one
# of plain POSTs and one with a fresh Idempotency-Key per request (32 connections each);
# RESTART_AT seconds in (default 8), `pg_ctl restart -m MODE` on tally's cluster. Prints each
# load's answers by status (bench/statuses.lua), how long the restart took, and tally's store
# metrics. wrk's -d bounds each run; the restarted server is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

MODES=${MODES:-fast immediate}
DURATION=${DURATION:-20}
RESTART_AT=${RESTART_AT:-8}
DOWN_SECS=${DOWN_SECS:-0}
PORT=${PORT:-18082}
OUT=bench/out
command -v wrk >/dev/null || { echo "pg_restart: wrk is missing (apt-get install wrk)" >&2; exit 1; }
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$PG_BIN/pg_ctl" ] || { echo "pg_restart: no pg_ctl (set PG_BIN)" >&2; exit 1; }

mkdir -p "$OUT"
# TALLY_BIN=/path/to/tally measures another build.
BIN=${TALLY_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --release --quiet
    BIN=target/release/tally
fi

# Runs pg_ctl as the owner of the cluster (tally runs it as an unprivileged user when root).
pg_ctl_as_owner() { # data_dir, args...
    local dir=$1 owner
    shift
    owner=$(stat -c %U "$dir")
    if [ "$owner" = "$(id -un)" ]; then
        "$PG_BIN/pg_ctl" -D "$dir" "$@"
    else
        (cd / && runuser -u "$owner" -- "$PG_BIN/pg_ctl" -D "$dir" "$@")
    fi
}

TALLY_PID=
finish() {
    [ -n "$TALLY_PID" ] && kill -TERM "$TALLY_PID" 2>/dev/null && wait "$TALLY_PID" 2>/dev/null
    # The restarted server is no longer tally's child: tally cannot stop it.
    [ -n "${PGDATA_DIR:-}" ] && [ -f "$PGDATA_DIR/postmaster.pid" ] &&
        pg_ctl_as_owner "$PGDATA_DIR" stop -m fast -w >/dev/null 2>&1
    TALLY_PID=
}
trap finish EXIT

for mode in $MODES; do
    data=$PWD/$OUT/pg-restart-$mode
    rm -rf "$data"
    PGDATA_DIR=$data/pg
    "$BIN" --listen "127.0.0.1:$PORT" --data-dir "$data" --log info >"$OUT/pg-restart-$mode.log" 2>&1 &
    TALLY_PID=$!
    wait_http "http://127.0.0.1:$PORT/api/v1/system/ready"
    url="http://127.0.0.1:$PORT/api/v1/counter"
    wrk -t1 -c32 -d"${DURATION}s" --timeout 10s "$url" -s bench/statuses.lua >"$OUT/pg-restart-$mode-plain.txt" &
    plain=$!
    wrk -t1 -c32 -d"${DURATION}s" --timeout 10s "$url" -s bench/statuses.lua -- keyed >"$OUT/pg-restart-$mode-keyed.txt" &
    keyed=$!
    sleep "$RESTART_AT"
    started=$(date +%s.%N)
    if [ "$DOWN_SECS" = 0 ]; then
        pg_ctl_as_owner "$PGDATA_DIR" restart -m "$mode" -w -l "$PGDATA_DIR/restart.log" >/dev/null
    else
        # A slower restart (a host reboot, a container rescheduled): stop, wait, start, with
        # the options tally started it with (its socket directory), as `restart` would.
        opts=$(cut -d' ' -f2- "$PGDATA_DIR/postmaster.opts")
        pg_ctl_as_owner "$PGDATA_DIR" stop -m "$mode" -w >/dev/null
        sleep "$DOWN_SECS"
        pg_ctl_as_owner "$PGDATA_DIR" start -w -o "$opts" -l "$PGDATA_DIR/restart.log" >/dev/null
    fi
    restarted=$(date +%s.%N)
    wait "$plain" "$keyed"
    echo "== pg_ctl restart -m $mode (down ${DOWN_SECS}s more): back after $(python3 -c "print(f'{$restarted - $started:.2f}')") s"
    for load in plain keyed; do
        echo "  $load: $(grep -h '^statuses:' "$OUT/pg-restart-$mode-$load.txt") ($(grep -h 'Requests/sec' "$OUT/pg-restart-$mode-$load.txt" | tr -s ' '))"
    done
    echo "  $(curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E '^tally_counter_(failed_commits|store_(unavailable|timeouts|lost|settled|disconnects))_total' | tr '\n' ' ')"
    finish
done
