# Shared by the bench scripts: source it after `cd` to the project root.

# wait_http URL: waits up to 30 s for URL to answer 2xx; fails (with a message) otherwise.
wait_http() {
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench: $1 did not come up" >&2
    return 1
}

# pick_cpus: SERVER_CPU and LOAD_CPU (overridable), the first two CPUs this process may use,
# so the server and the load generator never share one; exits when there are fewer than two.
pick_cpus() {
    local cpus
    mapfile -t cpus < <(python3 -c 'import os; print("\n".join(map(str, sorted(os.sched_getaffinity(0)))))')
    if [ "${#cpus[@]}" -lt 2 ]; then
        echo "bench: needs 2 CPUs (one for the server, one for the load)" >&2
        exit 1
    fi
    SERVER_CPU=${SERVER_CPU:-${cpus[0]}}
    LOAD_CPU=${LOAD_CPU:-${cpus[1]}}
}

# start_nginx PORT DIR: nginx pinned to SERVER_CPU (master_process off, one worker, no access
# log) answering every request with a fixed 200 '{"healthy":true}', the reference for "the
# HTTP limit of this machine"; sets NGINX_PID once it answers. Its files go in DIR.
start_nginx() {
    local port=$1 dir=$PWD/$2
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path $dir;
    server {
        listen 127.0.0.1:$port reuseport;
        location / {
            default_type application/json;
            return 200 '{"healthy":true}';
        }
    }
}
CONF
    taskset -c "$SERVER_CPU" nginx -c "$dir/nginx.conf" -p "$dir" &
    NGINX_PID=$!
    wait_http "http://127.0.0.1:$port/api/v1/system/health"
}

# launch_tally BIN DATA_DIR LOG_FILE [tally args...]: BIN pinned to SERVER_CPU with one core on
# 127.0.0.1:$PORT (LOG_LEVEL, default warn); sets TALLY_PID, added to PIDS, once health answers.
# SERVER_CORES (default 1) is passed as --cores, on the CPUs SERVER_CPUS (a taskset list,
# default SERVER_CPU): tally puts one core on each of the first SERVER_CORES CPUs it may use.
launch_tally() {
    local bin=$1 data=$2 log=$3
    shift 3
    taskset -c "${SERVER_CPUS:-$SERVER_CPU}" "$bin" --listen "127.0.0.1:$PORT" \
        --cores "${SERVER_CORES:-1}" --data-dir "$data" \
        --log "${LOG_LEVEL:-warn}" "$@" >"$log" 2>&1 &
    TALLY_PID=$!
    PIDS+=("$TALLY_PID")
    wait_http "http://127.0.0.1:$PORT/api/v1/system/health"
}

# stop_tally: SIGTERM to TALLY_PID, and waits for it to exit.
stop_tally() {
    kill -TERM "$TALLY_PID"
    wait "$TALLY_PID" || echo "bench: tally exited with $?" >&2
}
