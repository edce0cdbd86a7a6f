# syntax=docker/dockerfile:1
#
# tally container image: a thin wrapper around the release build CI runs.
#
#   docker build -t tally .
#   docker run --rm -p 8080:8080 --ulimit memlock=67108864:67108864 \
#       --security-opt seccomp=./deploy/seccomp-io_uring.json tally
#
# io_uring in a container needs three things this file cannot set (compose.yaml sets the first
# two, the host sets the third): a locked-memory limit of at least 512 KiB (`--ulimit memlock`),
# a seccomp profile that allows io_uring_setup/io_uring_enter/io_uring_register (Docker's default
# profile blocks them; deploy/seccomp-io_uring.json is an allow-list in Docker's format, written
# for tally from traced system calls, that includes those three),
# and the host sysctl kernel.io_uring_disabled = 0 (see sysctl.conf). tally checks all three at
# start-up and says which one is missing.
#
# `sudo deploy/check-container.sh` builds this file as it is (buildah, no Docker engine needed) and
# runs the image, compose.yaml and deploy/k8s's scripts for real; docs/deployment.md says how.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
# Build stage: the official Rust image on Debian bookworm, the same Debian release as the runtime
# stage, so the binary links against the same glibc it runs with.
FROM rust:${RUST_VERSION}-bookworm AS build

# glommio's build script runs `git` and compiles its bundled liburing with the C compiler. The
# rust:*-bookworm images ship both (they are built on buildpack-deps); fail here, with a clear
# message, rather than deep inside the glommio build if a future base image drops them.
RUN git --version && cc --version

WORKDIR /src
# .dockerignore keeps target/, .git, .tally/ and bench/out/ out of the context.
COPY . .

# The build command is exactly the one CI's release build uses (tests/deploy.rs checks it):
# --locked builds the dependency versions in Cargo.lock, nothing newer. The release profile in
# Cargo.toml (lto = "fat", codegen-units = 1, debug = 1) applies unchanged.
#
# Caching: BuildKit cache mounts keep the cargo registry and the target directory between builds,
# so a change in src/ recompiles tally (and the fat-LTO link) but not the ~300 dependency crates.
# The target directory is a cache mount, so the binary is copied out of it in the same step.
# The copy drops the DWARF line tables that Cargo.toml's `debug = 1` adds (about half the file);
# the symbol table stays, so a panic's backtrace still names its functions. Keep an unstripped
# build (CI's) for symbolizing addresses.
#
# Panic strategy: the default, panic = "unwind", deliberately (Cargo.toml sets no `panic`).
# tally catches a panic in a connection task (catch_unwind around each connection), so a bug hit
# by one request closes that one connection and the core goes on serving. With panic = "abort"
# the same bug would kill every core and every connection at once. A panic elsewhere (the owner
# core's commit loop, start-up) still ends the process with a non-zero status, and the
# container's restart policy (compose.yaml) brings it back.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/tally /out/tally \
    && strip --strip-debug /out/tally

# ---------------------------------------------------------------------------------------------
# PostgreSQL stage: Debian's postgresql-15, installed only to copy its server files out of.
# Debian builds it with LLVM JIT, so the package pulls in libllvm14 and libz3 (~130 MB), and
# postgresql-common pulls in Perl (~50 MB): none of it is needed to run initdb and postgres.
# postgresql-common is installed first and told not to create Debian's own "main" cluster.
FROM debian:bookworm-slim AS postgresql
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends postgresql-common; \
    sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf; \
    apt-get install -y --no-install-recommends postgresql-15; \
    rm -rf /usr/lib/postgresql/15/lib/bitcode /usr/lib/postgresql/15/lib/llvmjit*

# ---------------------------------------------------------------------------------------------
# Runtime stage: small Debian image with the same glibc as the build stage.
FROM debian:bookworm-slim AS runtime

# - ca-certificates: root CAs for any TLS a future DATABASE_URL may need.
# - curl: the HEALTHCHECK below.
# - PostgreSQL 15's server and client programs (/usr/lib/postgresql/15/bin, copied from the
#   stage above, JIT left out) and the shared libraries they link: tally's embedded default.
#   Without DATABASE_URL, tally runs initdb and postgres itself in $TALLY_DATA_DIR/pg, so
#   `docker run tally` works with no other container. With DATABASE_URL set (as in compose.yaml)
#   these programs are unused; they are kept so that the default always works. tzdata: Debian
#   builds PostgreSQL against the system's time zone data.
# - apt's package lists and its two 40 MB caches of them (pkgcache.bin, srcpkgcache.bin) are
#   removed in the same layer; the official slim image's apt configuration does the latter too.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl tzdata \
        libicu72 libldap-2.5-0 libgssapi-krb5-2 libpam0g libpq5 libreadline8 libssl3 libxml2 \
        libxslt1.1 libuuid1 liblz4-1 libzstd1 libselinux1 libsystemd0 zlib1g; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=postgresql /usr/lib/postgresql /usr/lib/postgresql
COPY --from=postgresql /usr/share/postgresql /usr/share/postgresql
# Fail the build here, not at a user's first start, if a Debian update gave postgresql-15 a
# library the list above lacks.
RUN missing=$(ldd /usr/lib/postgresql/15/bin/* /usr/lib/postgresql/15/lib/*.so 2>/dev/null \
        | grep 'not found' | sort -u); \
    if [ -n "$missing" ]; then echo "PostgreSQL needs libraries not installed: $missing" >&2; exit 1; fi; \
    /usr/lib/postgresql/15/bin/postgres --version && /usr/lib/postgresql/15/bin/initdb --version

# A fixed, unprivileged uid/gid, so volume ownership is predictable across rebuilds and hosts.
# PostgreSQL refuses to run as root; as `tally`, the embedded cluster runs as `tally` too.
RUN groupadd --system --gid 10001 tally \
    && useradd --system --uid 10001 --gid tally --home-dir /var/lib/tally --no-create-home \
        --shell /usr/sbin/nologin tally \
    && install -d -o tally -g tally -m 0700 /var/lib/tally

COPY --from=build /out/tally /usr/local/bin/tally

# Configuration through the environment (every flag has one; `tally --help` lists them):
# - TALLY_LISTEN: all interfaces inside the container, port 8080.
# - TALLY_DATA_DIR: tally's state; the embedded PostgreSQL cluster lives in $TALLY_DATA_DIR/pg.
#   A volume, so the count survives container replacement.
ENV TALLY_LISTEN=0.0.0.0:8080 \
    TALLY_DATA_DIR=/var/lib/tally
VOLUME ["/var/lib/tally"]
WORKDIR /var/lib/tally

USER tally:tally
EXPOSE 8080

# Liveness only (/api/v1/system/health answers as soon as a core serves); readiness, dataset
# loaded and store reachable, is /api/v1/system/ready, for load balancers. If you change
# TALLY_LISTEN's port, change it here too. The start period covers initdb on first run.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/api/v1/system/health || exit 1

# SIGTERM (docker stop) makes tally stop accepting, let in-flight requests finish for
# TALLY_SHUTDOWN_GRACE_SECS (default 10), commit the last counter batch and stop the embedded
# PostgreSQL. Give the container longer than that before SIGKILL (compose.yaml: stop_grace_period).
STOPSIGNAL SIGTERM

# Exec form: tally receives SIGTERM itself (no shell in between). tally does not reap orphaned
# grandchildren, so run it under a minimal init when it may be PID 1 (`docker run --init`,
# compose.yaml's `init: true`); the init forwards SIGTERM to tally.
ENTRYPOINT ["/usr/local/bin/tally"]
