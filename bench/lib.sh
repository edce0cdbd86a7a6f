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
