#!/usr/bin/env bash
# deploy/check-container.sh: build tally's image from the unchanged Dockerfile and run it for real.
#
#   sudo deploy/check-container.sh            # everything: base images, build, checks
#   sudo KEEP=1 deploy/check-container.sh     # leave the containers and volumes for a look
#   sudo COLD=1 deploy/check-container.sh     # from scratch: no cached images or build caches
#
# Needs root, Debian bookworm's podman, buildah, runc and debootstrap (installed with apt-get if
# missing), a Debian mirror and crates.io. No Docker engine and no image registry: the three
# images the Dockerfile and compose.yaml start FROM are made here, as stand-ins tagged with the
# exact names the files use, so both are built and run as written:
#
# - debian:bookworm-slim: `debootstrap --variant=minbase bookworm`, trimmed the way the official
#   slim image is (no docs, man pages or locales; the same dpkg path excludes), `podman import`.
# - rust:<RUST_VERSION>-bookworm: that Debian plus gcc, git, libc6-dev, ca-certificates and this
#   machine's own Rust toolchain (no docs), with the official image's RUSTUP_HOME, CARGO_HOME
#   and PATH, and this machine's CA bundle (TLS to crates.io may be re-signed by a proxy).
# - postgres:16: Debian's postgresql-15 with an entrypoint that honours POSTGRES_USER,
#   POSTGRES_PASSWORD and POSTGRES_DB like the official image's, data in
#   /var/lib/postgresql/data. (PostgreSQL 15, not 16: what bookworm has. tally needs neither.)
#
# They are cached (podman images labelled tally.check.standin) until STANDINS=rebuild. An image
# of that name that is not a stand-in (a machine that can pull) is used as it is.
#
# Then: `buildah bud --isolation chroot --format docker` of the Dockerfile (the docker format
# keeps HEALTHCHECK, which the OCI format drops), and the checks below. Each prints PASS or FAIL;
# the exit status is the number of failures (0: all passed).
#
# What this machine cannot give a container, and what the script lowers (the files stay right
# for a real Docker host; the script prints each substitution):
# - cgroups are in hybrid (v1) mode with no systemd: podman --cgroup-manager=cgroupfs.
# - podman's default OCI runtime is crun, not installed here; runc is Docker's: --runtime runc.
# - raising RLIMIT_NOFILE/RLIMIT_NPROC above the host's is forbidden: nofile=1024:1024,
#   nproc=1000:1000 (compose.yaml asks for nofile 1048576).
# - the host's hard RLIMIT_MEMLOCK is 8 MiB: memlock is capped to it (compose.yaml asks for
#   64 MiB; glommio needs 512 KiB).
# - podman runs HEALTHCHECKs from systemd timers; there is no systemd, so the script runs
#   `podman healthcheck run` itself at the compose file's interval.
# - podman 4.3 cannot wait for `condition: service_healthy` (podman-compose needs podman 4.6),
#   so the script brings up `postgres`, waits for it to be healthy, then the tally services,
#   which is the order compose.yaml asks for.
# - ports are published on 127.0.0.1 only, at 8080+OFFSET (default 10400) instead of 8080.
set -Eeuo pipefail

cd "$(dirname "$0")/.."

CACHE=${TALLY_CHECK_CACHE:-/var/cache/tally-check}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
OFFSET=${OFFSET:-10400}
SOLO_PORT=$((8090 + OFFSET))
STANDIN_LABEL=tally.check.standin
IMAGE=tally:latest
PROFILE=deploy/seccomp-io_uring.json
WORK=$(mktemp -d /tmp/tally-check.XXXXXX)

say() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
FAILURES=0
CHECKS=()
pass() { CHECKS+=("PASS  $*"); say "PASS  $*"; }
fail() { CHECKS+=("FAIL  $*"); say "FAIL  $*"; FAILURES=$((FAILURES + 1)); }
check() { # check "description" command...: PASS if the command succeeds
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

if [ "$(id -u)" != 0 ]; then
    say "check-container.sh: run as root (podman and buildah here run rootful)" >&2
    exit 2
fi

# ---------------------------------------------------------------------------------------------
section "tools"
need=()
for tool in podman buildah runc debootstrap curl python3; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if [ "${#need[@]}" -gt 0 ]; then
    say "installing with apt-get: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# podman-compose from PyPI, in a venv of its own (pinned; Debian bookworm's is 1.0.3).
PODMAN_COMPOSE_VERSION=1.6.0
if ! "$CACHE/venv/bin/podman-compose" --version 2>/dev/null | grep -q "$PODMAN_COMPOSE_VERSION"; then
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION"
fi
say "$(podman --version), $(buildah --version | cut -d' ' -f1-3), $(runc --version | head -1)," \
    "podman-compose $PODMAN_COMPOSE_VERSION, kernel $(uname -r)"

MEMLOCK_WANTED=67108864 # compose.yaml and the Dockerfile's docker run line
hard_kib=$(ulimit -H -l)
if [ "$hard_kib" = unlimited ] || [ $((hard_kib * 1024)) -ge "$MEMLOCK_WANTED" ]; then
    MEMLOCK=$MEMLOCK_WANTED
else
    MEMLOCK=$((hard_kib * 1024))
fi
PODMAN=(podman --cgroup-manager=cgroupfs)
RUN_ARGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1000:1000
    --ulimit "memlock=$MEMLOCK:$MEMLOCK")
section "lowered for this machine (the files are unchanged)"
say "podman --cgroup-manager=cgroupfs: cgroups v1 (hybrid) and no systemd here"
say "--runtime runc: Docker's runtime; podman's default (crun) is not installed"
say "--ulimit nofile=1024:1024 (compose.yaml: 1048576) and nproc=1000:1000: raising them above the host's is forbidden here"
say "--ulimit memlock=$MEMLOCK:$MEMLOCK (compose.yaml: $MEMLOCK_WANTED): the host's hard limit is ${hard_kib} KiB; glommio needs 512 KiB"
say "ports on 127.0.0.1 only, at 8080+$OFFSET; HEALTHCHECKs run by this script (no systemd timers)"

# ---------------------------------------------------------------------------------------------
# Clean-up: only what this script made (its containers, volumes, network, temporary files).
HEALTH_PID=
cleanup() {
    local status=$?
    [ -n "$HEALTH_PID" ] && kill "$HEALTH_PID" 2>/dev/null
    if [ -z "${KEEP:-}" ]; then
        "${PODMAN[@]}" rm -f -t 0 tally-check-solo tally-check-default tally-check-installer \
            >/dev/null 2>&1 || true
        compose down -v >/dev/null 2>&1 || true
        "${PODMAN[@]}" volume rm -f tally-check-data >/dev/null 2>&1 || true
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
section "stand-in base images"

is_standin() { [ "$(podman image inspect --format "{{ index .Labels \"$STANDIN_LABEL\" }}" "$1" 2>/dev/null)" = 1 ]; }
have_image() {
    podman image exists "$1" || return 1
    if [ "${STANDINS:-}" = rebuild ] && is_standin "$1"; then
        podman rmi -f "$1" >/dev/null
        return 1
    fi
}

RUST_IMAGE=$(awk -F= '/^ARG RUST_VERSION=/ { print "rust:" $2 "-bookworm" }' Dockerfile)
[ -n "$RUST_IMAGE" ] || { say "no ARG RUST_VERSION in the Dockerfile"; exit 2; }

ROOTFS=$CACHE/rootfs-bookworm-minbase
if [ -n "${COLD:-}" ]; then
    # Everything from scratch, to time a first run: the stand-ins, the debootstrap tree, tally's
    # image, buildah's layers and its cache mounts (cargo's registry and target directory).
    say "COLD=1: removing the stand-in images, $ROOTFS, $IMAGE and buildah's build caches"
    for image in "$IMAGE" "$RUST_IMAGE" postgres:16 debian:bookworm-slim; do
        if [ "$image" = "$IMAGE" ] || is_standin "$image"; then podman rmi -f "$image" >/dev/null 2>&1 || true; fi
    done
    buildah rmi --prune >/dev/null 2>&1 || true
    rm -rf "$ROOTFS" /var/tmp/buildah-cache
fi
FIRST_START=$(now)
t0=$(now)
if have_image debian:bookworm-slim; then
    say "debian:bookworm-slim: cached ($(is_standin debian:bookworm-slim && echo stand-in || echo real image))"
else
    if [ ! -f "$ROOTFS/etc/debian_version" ]; then
        say "debootstrap --variant=minbase bookworm ($MIRROR)"
        rm -rf "$ROOTFS.tmp"
        debootstrap --variant=minbase bookworm "$ROOTFS.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1
        mv "$ROOTFS.tmp" "$ROOTFS"
    fi
    # Trim it the way the official slim image is: no package caches or lists, no docs, man pages
    # or locales, and dpkg told not to install them later (the same path excludes).
    slim=$WORK/slim
    mkdir -p "$slim"
    tar -C "$ROOTFS" --exclude=./var/cache/apt/archives/'*.deb' --exclude=./var/lib/apt/lists/'*' \
        --exclude=./usr/share/doc/'*' --exclude=./usr/share/man/'*' --exclude=./usr/share/info/'*' \
        --exclude=./usr/share/locale/'*' -c . | tar -C "$slim" -x
    mkdir -p "$slim/etc/dpkg/dpkg.cfg.d"
    cat >"$slim/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    cat >"$slim/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    rm -f "$slim/etc/apt/sources.list"
    cat >"$slim/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    tar -C "$slim" -c . | podman import --quiet --change 'CMD ["bash"]' \
        --change "LABEL $STANDIN_LABEL=1" - debian:bookworm-slim >/dev/null
    rm -rf "$slim"
    say "debian:bookworm-slim: imported from debootstrap"
fi

if have_image "$RUST_IMAGE"; then
    say "$RUST_IMAGE: cached ($(is_standin "$RUST_IMAGE" && echo stand-in || echo real image))"
else
    rustc_version=$(rustc --version | cut -d' ' -f2)
    toolchain_dir=$(rustc --print sysroot)
    host=$(rustc -vV | awk '/^host:/ { print $2 }')
    ctr=$(buildah from --pull-never debian:bookworm-slim)
    buildah run --isolation chroot "$ctr" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc git libc6-dev ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*'
    # This machine's CA bundle: TLS to crates.io and git hosts is re-signed here.
    buildah copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
    # The toolchain as rustup lays it out, without its HTML docs.
    tar -C "$toolchain_dir" --exclude=./share/doc -c . |
        buildah run --isolation chroot "$ctr" -- sh -c "mkdir -p /usr/local/rustup/toolchains/$rustc_version-$host && tar -C /usr/local/rustup/toolchains/$rustc_version-$host -x"
    buildah copy "$ctr" "$(command -v rustup)" /usr/local/cargo/bin/rustup >/dev/null
    buildah run --isolation chroot "$ctr" -- sh -c "cd /usr/local/cargo/bin && for t in cargo rustc rustdoc cargo-clippy clippy-driver rustfmt cargo-fmt rust-gdb rust-lldb; do ln -sf rustup \$t; done && printf 'version = \"12\"\ndefault_toolchain = \"$rustc_version-$host\"\nprofile = \"minimal\"\n' > /usr/local/rustup/settings.toml && chmod -R a+w /usr/local/rustup /usr/local/cargo"
    buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env RUST_VERSION="$rustc_version" --label "$STANDIN_LABEL=1" --cmd bash "$ctr"
    buildah run --isolation chroot "$ctr" -- sh -c 'cargo --version && rustc --version && cc --version | head -1 && git --version'
    buildah commit --quiet --rm --format docker "$ctr" "$RUST_IMAGE" >/dev/null
    say "$RUST_IMAGE: debian:bookworm-slim + gcc git libc6-dev ca-certificates + rustc $rustc_version"
fi

if have_image postgres:16; then
    say "postgres:16: cached ($(is_standin postgres:16 && echo stand-in || echo real image))"
else
    ctr=$(buildah from --pull-never debian:bookworm-slim)
    buildah run --isolation chroot "$ctr" -- sh -c 'set -e; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null; sed -ri "s/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/" /etc/postgresql-common/createcluster.conf; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null; rm -rf /var/lib/apt/lists/*; install -d -o postgres -g postgres -m 2775 /var/run/postgresql'
    cat >"$WORK/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Stand-in for the official postgres image's entrypoint: the same environment variables.
set -eu
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ "${1:-postgres}" != postgres ]; then exec "$@"; fi
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres stand-in: POSTGRES_PASSWORD must be set" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        printf 'CREATE DATABASE "%s";\n' "$POSTGRES_DB" |
            as_postgres postgres --single -D "$PGDATA" -j postgres >/dev/null
    fi
    echo "postgres stand-in: initialized $PGDATA for $POSTGRES_USER/$POSTGRES_DB"
fi
shift || true
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" \
    -c listen_addresses='*' "$@"
EOF
    buildah copy --chmod 0755 "$ctr" "$WORK/docker-entrypoint.sh" /usr/local/bin/docker-entrypoint.sh >/dev/null
    buildah config --env PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env PGDATA=/var/lib/postgresql/data --volume /var/lib/postgresql/data --port 5432 \
        --stop-signal SIGINT --entrypoint '["docker-entrypoint.sh"]' --cmd postgres \
        --label "$STANDIN_LABEL=1" "$ctr"
    buildah commit --quiet --rm --format docker "$ctr" postgres:16 >/dev/null
    say "postgres:16: debian:bookworm-slim + postgresql-15 + an entrypoint for POSTGRES_*"
fi
say "base images ready in $(elapsed "$t0" "$(now)") s"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(localhost/)?(debian|rust|postgres)' || true

[ "${CHECK_UNTIL:-}" = standins ] && exit 0

# ---------------------------------------------------------------------------------------------
section "image build (buildah bud --isolation chroot --format docker, the unchanged Dockerfile)"
t0=$(now)
if buildah bud --isolation chroot --format docker --layers --pull-never -t "$IMAGE" . \
    >"$WORK/build.log" 2>&1; then
    BUILD_SECS=$(elapsed "$t0" "$(now)")
    pass "image builds from the Dockerfile (${BUILD_SECS} s)"
else
    BUILD_SECS=$(elapsed "$t0" "$(now)")
    tail -40 "$WORK/build.log"
    fail "image builds from the Dockerfile (failed after ${BUILD_SECS} s)"
    exit 1
fi
cp "$WORK/build.log" "$CACHE/build.log"
grep -E 'Finished|Compiling tally ' "$WORK/build.log" | tail -2 || true

section "image size"
podman image inspect --format 'tally:latest: {{.Size}} bytes, {{len .RootFS.Layers}} layers' "$IMAGE"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150
# What dominates: the biggest directories and packages in the runtime image.
mnt_ctr=$(buildah from --pull-never "$IMAGE")
mnt=$(buildah mount "$mnt_ctr")
say "largest directories:"
du -xsh "$mnt"/usr/lib/postgresql "$mnt"/usr/lib/x86_64-linux-gnu "$mnt"/usr/share "$mnt"/usr/bin \
    "$mnt"/usr/local/bin/tally "$mnt"/var "$mnt"/etc 2>/dev/null | sed "s|$mnt||" | sort -h
say "largest packages (dpkg, KiB):"
chroot "$mnt" dpkg-query -W -f '${Installed-Size}\t${Package}\n' | sort -n | tail -8
say "tally binary: $(file -b "$mnt/usr/local/bin/tally" 2>/dev/null | cut -d, -f1,2,5- || true)"
buildah umount "$mnt_ctr" >/dev/null
buildah rm "$mnt_ctr" >/dev/null

[ "${CHECK_UNTIL:-}" = build ] && exit 0

# ---------------------------------------------------------------------------------------------
# Helpers for the running checks.

# wait_http URL SECONDS: until URL answers 200; prints the seconds it took.
wait_http() {
    local url=$1 limit=$2 start
    start=$(now)
    while ! curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [ "$(elapsed "$start" "$(now)" | cut -d. -f1)" -ge "$limit" ]; then
            return 1
        fi
        sleep 0.2
    done
    elapsed "$start" "$(now)"
}
# json_field JSON FIELD
json_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
# counter_post BASE_URL, counter_get BASE_URL: the count in the answer (fails on an error status)
counter_post() { json_field "$(curl -fsS -X POST "$1/api/v1/counter")" count 2>/dev/null; }
counter_get() { json_field "$(curl -fsS "$1/api/v1/counter")" count 2>/dev/null; }
host_pid_of_tally() { # the host PID of the tally process in container $1
    "${PODMAN[@]}" top "$1" hpid args 2>/dev/null | awk '$2 ~ /\/usr\/local\/bin\/tally$/ { print $1; exit }'
}

run_solo() { # run_solo NAME [extra podman args...]: docker-run style, embedded PostgreSQL
    local name=$1
    shift
    # (podman's complaints that it cannot reach systemd for health-check timers go to a log)
    "${PODMAN[@]}" run -d --name "$name" "${RUN_ARGS[@]}" --init \
        -p "127.0.0.1:$SOLO_PORT:8080" -v tally-check-data:/var/lib/tally "$@" "$IMAGE" \
        >/dev/null 2>>"$WORK/podman.log"
}

"${PODMAN[@]}" rm -f -t 0 tally-check-solo tally-check-default >/dev/null 2>&1 || true
"${PODMAN[@]}" volume rm -f tally-check-data >/dev/null 2>&1 || true

# ---------------------------------------------------------------------------------------------
section "docker run, no database (embedded PostgreSQL), under $PROFILE"
SOLO=http://127.0.0.1:$SOLO_PORT
t0=$(now)
run_solo tally-check-solo --security-opt "seccomp=$PROFILE"
if wait_http "$SOLO/api/v1/system/ready" 120 >/dev/null; then
    STARTUP_FIRST=$(elapsed "$t0" "$(now)")
    pass "container starts under the io_uring profile and is ready (${STARTUP_FIRST} s from podman run, first start: initdb)"
else
    "${PODMAN[@]}" logs --tail 30 tally-check-solo || true
    fail "container starts under the io_uring profile and is ready"
fi
check "GET /api/v1/system/health is 200" curl -fsS -o /dev/null "$SOLO/api/v1/system/health"
check "GET /api/v1/system/ready is 200" curl -fsS -o /dev/null "$SOLO/api/v1/system/ready"
first=$(counter_post "$SOLO" || echo 0)
second=$(counter_post "$SOLO" || echo 0)
got=$(counter_get "$SOLO" || echo -1)
check "POST /api/v1/counter counts ($first, $second) and GET reads it ($got)" \
    test "$first" -ge 1 -a "$second" = $((first + 1)) -a "$got" = "$second"
sample=$("${PODMAN[@]}" exec tally-check-solo sh -c 'tally sample | head -1' 2>/dev/null || true)
key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$sample" 2>/dev/null || true)
value=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["value"])' "$sample" 2>/dev/null || true)
answer=$(curl -fsS -X POST "$SOLO/get_value" -d "{\"key\":\"$key\"}" 2>/dev/null || true)
check "POST /get_value finds a sample key ($key)" \
    test -n "$key" -a "$(json_field "$answer" value 2>/dev/null)" = "$value"
user=$("${PODMAN[@]}" top tally-check-solo user args | awk '$2 ~ /\/usr\/local\/bin\/tally$/ { print $1 }')
pg_users=$("${PODMAN[@]}" top tally-check-solo user args | awk '$2 ~ /postgres/ { print $1 }' | sort -u | xargs)
check "tally runs as the non-root user ($user; embedded postgres as: ${pg_users:-none})" \
    test "$user" = tally -a "${pg_users:-none}" = tally
hpid=$(host_pid_of_tally tally-check-solo)
rings=$(find "/proc/$hpid/fd" -lname 'anon_inode:\[io_uring\]' 2>/dev/null | wc -l)
seccomp_mode=$(awk '/^Seccomp:/ { print $2 }' "/proc/$hpid/status" 2>/dev/null)
check "tally uses io_uring under the profile ($rings rings open; Seccomp mode $seccomp_mode = filter)" \
    test "$rings" -ge 1 -a "$seccomp_mode" = 2
healthcheck=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")
check "the image's HEALTHCHECK runs inside and passes ($healthcheck)" \
    "${PODMAN[@]}" healthcheck run tally-check-solo

# SIGTERM with the last batch in flight: increments right up to the stop.
for _ in $(seq 1 20); do curl -fsS -o /dev/null -X POST "$SOLO/api/v1/counter" & done
last=$(counter_post "$SOLO" || echo 0)
wait
last=$(counter_get "$SOLO" || echo "$last")
t0=$(now)
"${PODMAN[@]}" stop -t 30 tally-check-solo >/dev/null 2>>"$WORK/podman.log"
STOP_SECS=$(elapsed "$t0" "$(now)")
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' tally-check-solo)
check "podman stop (SIGTERM): exit status $code in ${STOP_SECS} s (grace 10 s, SIGKILL at 30 s)" \
    test "$code" = 0 -a "$(echo "$STOP_SECS" | cut -d. -f1)" -lt 30
"${PODMAN[@]}" logs tally-check-solo 2>&1 | grep -iE 'shutdown|stopp|commit' | tail -3 || true
"${PODMAN[@]}" rm tally-check-solo >/dev/null 2>>"$WORK/podman.log"
t0=$(now)
run_solo tally-check-solo --security-opt "seccomp=$PROFILE"
if wait_http "$SOLO/api/v1/system/ready" 120 >/dev/null; then
    STARTUP_AGAIN=$(elapsed "$t0" "$(now)")
else
    STARTUP_AGAIN=timeout
fi
kept=$(counter_get "$SOLO" || echo -1)
next=$(counter_post "$SOLO" || echo -1)
check "the count survives rm + recreate on the same volume ($last before the stop, $kept after; next POST $next; ready in ${STARTUP_AGAIN} s)" \
    test "$kept" = "$last" -a "$next" = $((last + 1))
"${PODMAN[@]}" rm -f -t 30 tally-check-solo >/dev/null 2>>"$WORK/podman.log"

# Without the profile: the runtime's default seccomp profile blocks io_uring. tally must say so.
"${PODMAN[@]}" run --name tally-check-default "${RUN_ARGS[@]}" --init \
    -v tally-check-data:/var/lib/tally "$IMAGE" >"$WORK/default.log" 2>&1 || true
grep -v 'level=error msg=".*systemd' "$WORK/default.log" >"$WORK/default.clean" || true
mv "$WORK/default.clean" "$WORK/default.log"
if grep -qi seccomp "$WORK/default.log"; then
    pass "under the runtime's default seccomp profile tally exits naming the seccomp profile"
elif "${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' tally-check-default | grep -qx 0; then
    pass "under the runtime's default seccomp profile tally runs (this runtime allows io_uring)"
else
    cat "$WORK/default.log"
    fail "under the runtime's default seccomp profile tally exits naming the seccomp profile"
fi
say "  $(grep -i seccomp "$WORK/default.log" | head -1 | cut -c1-220)"
"${PODMAN[@]}" rm -f tally-check-default >/dev/null 2>&1 || true

[ "${CHECK_UNTIL:-}" = solo ] && exit "$FAILURES"

# ---------------------------------------------------------------------------------------------
section "deploy/k8s pieces, run in podman (no cluster here)"
# The scripts are taken from the manifests as written. Pod settings are mirrored as podman
# flags: runAsUser 10001, readOnlyRootFilesystem, no capabilities, allowPrivilegeEscalation:
# false (no-new-privileges: the runtime installs the filter just before execve, the other path).
k8s_script() { # k8s_script FILE KIND CONTAINER: a container's args[0] from a manifest
    "$CACHE/venv/bin/python3" - "$@" <<'EOF'
import sys, yaml
path, kind, name = sys.argv[1:]
for doc in yaml.safe_load_all(open(path)):
    if doc and doc["kind"] == kind:
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["name"] == name:
                print(c["args"][0])
EOF
}
# The seccomp installer DaemonSet's script, with a directory standing in for the node's
# /var/lib/kubelet/seccomp and the ConfigMap's file for its volume.
mkdir -p "$WORK/node-seccomp" "$WORK/profile-volume"
"$CACHE/venv/bin/python3" - deploy/k8s/seccomp-profile-installer.yaml "$WORK/profile-volume" <<'EOF'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap":
        for name, text in doc["data"].items():
            open(f"{sys.argv[2]}/{name}", "w").write(text)
EOF
"${PODMAN[@]}" run -d --name tally-check-installer "${RUN_ARGS[@]}" --user 0:0 --read-only \
    --cap-drop ALL --security-opt no-new-privileges \
    -v "$WORK/profile-volume:/profile:ro" -v "$WORK/node-seccomp:/host-seccomp" \
    --entrypoint /bin/sh "$IMAGE" -c "$(k8s_script deploy/k8s/seccomp-profile-installer.yaml DaemonSet install)" \
    >/dev/null 2>>"$WORK/podman.log"
installed=$WORK/node-seccomp/profiles/tally-io_uring.json
for _ in $(seq 1 50); do [ -f "$installed" ] && break; sleep 0.2; done
check "seccomp installer puts deploy/seccomp-io_uring.json at <kubelet seccomp>/profiles/tally-io_uring.json" \
    cmp -s "$installed" "$PROFILE"
"${PODMAN[@]}" rm -f -t 2 tally-check-installer >/dev/null 2>>"$WORK/podman.log" || true

# A ConfigMap volume as the kubelet lays it out: kv.jsonl -> ..data/kv.jsonl, ..data -> a
# timestamped directory; an update writes a new directory and renames a new ..data over it.
KV=$WORK/kv-volume
K1=11111111-1111-4111-8111-111111111111
mkdir -p "$KV"
configmap_version() { # configmap_version N: publish a dataset whose value for K1 is vN
    mkdir "$KV/..v$1"
    printf '{"key":"%s","value":"v%s"}\n' "$K1" "$1" >"$KV/..v$1/kv.jsonl"
    chmod -R a+rX "$KV/..v$1"
    ln -s "..v$1" "$KV/..data_tmp"
    mv -T "$KV/..data_tmp" "$KV/..data"
    [ -L "$KV/kv.jsonl" ] || ln -s ..data/kv.jsonl "$KV/kv.jsonl"
}
configmap_version 1
chmod a+rx "$KV"
lookup() { json_field "$(curl -fsS -X POST "$SOLO/get_value" -d "{\"key\":\"$K1\"}")" value 2>/dev/null; }
"${PODMAN[@]}" volume rm -f tally-check-data >/dev/null 2>&1 || true
"${PODMAN[@]}" run -d --name tally-check-solo "${RUN_ARGS[@]}" --init --user 10001:10001 \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    --security-opt "seccomp=$installed" \
    -p "127.0.0.1:$SOLO_PORT:8080" -v tally-check-data:/var/lib/tally -v "$KV:/data:ro" \
    --entrypoint /bin/sh "$IMAGE" -c "$(k8s_script deploy/k8s/deployment.yaml Deployment tally)" \
    >/dev/null 2>>"$WORK/podman.log"
wait_http "$SOLO/api/v1/system/ready" 60 >/dev/null || "${PODMAN[@]}" logs --tail 20 tally-check-solo
check "deployment.yaml's tally command serves the ConfigMap's dataset (read-only root, no capabilities, no-new-privileges, the installed profile): $K1 -> $(lookup)" \
    test "$(lookup)" = v1
# The kubelet's update: a new directory and a new ..data renamed over the old one; the
# deployment's command turns --kv-watch on with the dataset, which follows the swap.
for version in 2 3; do
    configmap_version "$version"
    t0=$(now)
    for _ in $(seq 1 100); do [ "$(lookup)" = "v$version" ] && break; sleep 0.1; done
    check "after a ConfigMap-style ..data swap, deployment.yaml's --kv-watch serves v$version ($(lookup) after $(elapsed "$t0" "$(now)") s)" \
        test "$(lookup)" = "v$version"
done
"${PODMAN[@]}" rm -f -t 30 tally-check-solo >/dev/null 2>>"$WORK/podman.log"
"${PODMAN[@]}" volume rm -f tally-check-data >/dev/null 2>&1 || true


# ---------------------------------------------------------------------------------------------
section "compose.yaml with podman-compose $PODMAN_COMPOSE_VERSION"
# podman as compose calls it, with only this machine's limits lowered (each one logged).
cat >"$WORK/podman" <<EOF
#!/usr/bin/env bash
# podman for podman-compose on this machine: the compose file's ports, nofile and memlock lowered.
args=(--cgroup-manager=cgroupfs)
sub=
nofile_given=
while [ \$# -gt 0 ]; do
    a=\$1
    shift
    if [ -z "\$sub" ] && [[ \$a != -* ]]; then
        sub=\$a
        args+=("\$a")
        if [ "\$a" = create ] || [ "\$a" = run ]; then
            args+=(--runtime runc --ulimit nproc=1000:1000)
        fi
        at=\${#args[@]}
        continue
    fi
    case "\$sub:\$a" in
    create:--ulimit | run:--ulimit)
        v=\$1
        shift
        case \$v in
        nofile=*) echo "lowered: --ulimit \$v -> nofile=1024:1024" >>"$WORK/lowered.log"; v=nofile=1024:1024; nofile_given=1 ;;
        memlock=*) echo "lowered: --ulimit \$v -> memlock=$MEMLOCK:$MEMLOCK" >>"$WORK/lowered.log"; v=memlock=$MEMLOCK:$MEMLOCK ;;
        esac
        args+=(--ulimit "\$v")
        ;;
    create:-p | run:-p)
        v=\$1
        shift
        host=\${v%%:*}
        new=127.0.0.1:\$((host + $OFFSET)):\${v#*:}
        echo "lowered: -p \$v -> -p \$new" >>"$WORK/lowered.log"
        args+=(-p "\$new")
        ;;
    *) args+=("\$a") ;;
    esac
done
# podman's own default nofile (1048576) is above what this machine allows, too.
if [ -z "\$nofile_given" ] && { [ "\$sub" = create ] || [ "\$sub" = run ]; }; then
    args=("\${args[@]:0:at}" --ulimit nofile=1024:1024 "\${args[@]:at}")
fi
exec podman "\${args[@]}" 2>>"$WORK/podman.log"
EOF
chmod +x "$WORK/podman"

# The second replica exactly as compose.yaml describes it: its commented `tally-2` block.
python3 - compose.yaml "$WORK/replica.yaml" <<'EOF'
import sys
lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines) if l.strip() == "# tally-2:")
block = []
for line in lines[start:]:
    if not line.startswith("  #"):
        break
    text = line[3:]
    if block and text.strip() == "":
        break
    block.append(text[1:] if text.startswith(" ") else text)
open(sys.argv[2], "w").write("services:\n" + "\n".join("  " + l for l in block) + "\n")
EOF
say "second replica, from compose.yaml's comment:"
sed 's/^/  | /' "$WORK/replica.yaml"

compose() {
    "$CACHE/venv/bin/podman-compose" --podman-path "$WORK/podman" --in-pod false -p tallycheck \
        -f compose.yaml -f "$WORK/replica.yaml" "$@"
}
compose down -v >/dev/null 2>&1 || true

# Health checks as podman's systemd timers would run them.
(
    while sleep 2; do
        for c in $(podman ps --format '{{.Names}}' --filter label=io.podman.compose.project=tallycheck); do
            "${PODMAN[@]}" healthcheck run "$c" >/dev/null 2>&1 || true
        done
    done
) &
HEALTH_PID=$!

t0=$(now)
compose up -d postgres >"$WORK/compose.log" 2>&1 || {
    cat "$WORK/compose.log"
    tail -5 "$WORK/podman.log"
    fail "compose up postgres"
}
status=starting
for _ in $(seq 1 60); do
    status=$(podman inspect --format '{{.State.Health.Status}}' tallycheck_postgres_1 2>/dev/null || echo missing)
    [ "$status" = healthy ] && break
    sleep 1
done
check "compose: the postgres service becomes healthy (pg_isready; $(elapsed "$t0" "$(now)") s)" \
    test "$status" = healthy
t0=$(now)
compose up -d tally tally-2 >>"$WORK/compose.log" 2>&1 || {
    cat "$WORK/compose.log"
    tail -5 "$WORK/podman.log"
    fail "compose up tally"
}
P1=http://127.0.0.1:$((8080 + OFFSET))
P2=http://127.0.0.1:$((8081 + OFFSET))
if wait_http "$P1/api/v1/system/ready" 90 >/dev/null && wait_http "$P2/api/v1/system/ready" 90 >/dev/null; then
    pass "compose: tally and tally-2 reach postgres by service name and are ready ($(elapsed "$t0" "$(now)") s)"
else
    compose logs tally 2>&1 | tail -20 || true
    fail "compose: tally and tally-2 reach postgres by service name and are ready"
fi
grep lowered "$WORK/lowered.log" 2>/dev/null | sort -u | sed 's/^/  /' || true
env_url=$(podman inspect --format '{{range .Config.Env}}{{println .}}{{end}}' tallycheck_tally_1 | grep '^DATABASE_URL=' | sed 's/:[^:@]*@/:***@/')
say "  tally's $env_url"
: >"$WORK/values"
for i in $(seq 1 20); do
    port=$P1
    [ $((i % 2)) = 0 ] && port=$P2
    counter_post "$port" >>"$WORK/values" || echo fail >>"$WORK/values"
done
total=$(wc -l <"$WORK/values")
distinct=$(sort -u "$WORK/values" | grep -cv fail || true)
g1=$(counter_get "$P1" || echo -1)
sleep 0.5
g1=$(counter_get "$P1" || echo -1)
g2=$(counter_get "$P2" || echo -1)
max=$(sort -n "$WORK/values" | tail -1)
check "compose: two replicas share the count ($total POSTs alternating, $distinct distinct values, max $max; GET: $g1 and $g2)" \
    test "$distinct" = 20 -a "$g1" = "$max" -a "$g2" = "$max"
rows=$("${PODMAN[@]}" exec tallycheck_postgres_1 psql -U tally -d tally -Atc '\dt' 2>/dev/null | cut -d'|' -f2 | xargs)
say "  tables in postgres: ${rows:-?}"
t0=$(now)
"${PODMAN[@]}" stop -t 30 tallycheck_tally_1 >/dev/null 2>>"$WORK/podman.log"
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' tallycheck_tally_1)
check "compose: tally stops on SIGTERM with status $code in $(elapsed "$t0" "$(now)") s" test "$code" = 0
compose down -v >>"$WORK/compose.log" 2>&1 || true

# ---------------------------------------------------------------------------------------------
section "summary"
printf '%s\n' "${CHECKS[@]}"
say "image build: ${BUILD_SECS} s; start-up to ready: ${STARTUP_FIRST:-?} s (first, initdb), ${STARTUP_AGAIN:-?} s (existing volume); podman stop: ${STOP_SECS:-?} s"
say "whole check: $(elapsed "$FIRST_START" "$(now)") s (from the stand-ins on)"
say "image size: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
if [ "$FAILURES" = 0 ]; then say "ALL PASSED"; else say "$FAILURES FAILED"; fi
exit "$FAILURES"
