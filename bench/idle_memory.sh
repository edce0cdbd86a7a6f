#!/usr/bin/env bash
# Memory per idle keep-alive connection on each --io path (docs/api.md, "Memory per connection"):
# tally --cores 1 on a fresh data dir, 10,000 connections that send one request each and then
# idle, then (fresh server) 10,000 that never send.
#
#   bench/idle_memory.sh            # CONNECTIONS=10000, IO_PATHS="uring glommio"
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
CONNECTIONS=${CONNECTIONS:-10000}
IO_PATHS=${IO_PATHS:-uring glommio}
PORT=${PORT:-18085}
cargo build --release --quiet
DATA=$(mktemp -d)
chmod 777 "$DATA"
PID=
cleanup() {
    if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$DATA"
}
trap cleanup EXIT
for io in $IO_PATHS; do
    for mode in --request ""; do
        target/release/tally --listen "127.0.0.1:$PORT" --cores 1 --data-dir "$DATA" --io "$io" \
            --log warn --max-connections-per-core $((CONNECTIONS + 100)) >"$DATA/tally.log" 2>&1 &
        PID=$!
        wait_http "http://127.0.0.1:$PORT/api/v1/system/health"
        sleep 1
        echo -n "--io $io: "
        python3 bench/idle_memory.py "$PORT" "$PID" "$CONNECTIONS" $mode
        kill -TERM "$PID"
        wait "$PID" || true
        PID=
    done
done
