//! Static checks of the deployment files (no Docker engine needed): `compose.yaml` and the seccomp
//! profile parse and give tally what io_uring needs in a container, the Dockerfile wraps exactly
//! the build command CI uses, `sysctl.conf` is commented line by line, and the commands in
//! README.md are the ones CI runs, so none of them can drift apart silently. The Kubernetes
//! manifests in deploy/k8s/ pass kubernetes-validate's schemas (where it is installed: CI
//! installs it) and their probes, ports, user and seccomp profile match tally's.
//! `deploy/check-container.sh` builds and runs the image for real (root, podman; minutes).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// The release build, in the Dockerfile and wherever CI builds a release.
const BUILD_COMMAND: &str = "cargo build --release --locked";
/// The test command CI runs (`.ci/run`) and README.md tells a newcomer to run.
const TEST_COMMAND: &str = "cargo test --locked && TALLY_IO=glommio cargo test --locked --test '*'";
/// The run command README.md must show.
const RUN_COMMAND: &str = "cargo run --release";

const SECCOMP_PROFILE: &str = "deploy/seccomp-io_uring.json";

/// System calls seen with `strace -f` while running the release binary (as root and as an
/// unprivileged user): start-up, every endpoint, wrk load (plain, pipelined, 2,000 connections),
/// SIGTERM with an idle connection open.
const TALLY_SYSCALLS: &[&str] = &[
    "accept",
    "access",
    "arch_prctl",
    "bind",
    "brk",
    "close",
    "eventfd2",
    "execve",
    "exit",
    "exit_group",
    "fcntl",
    "futex",
    "getrandom",
    "gettid",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioctl",
    "listen",
    "madvise",
    "membarrier",
    "mmap",
    "mprotect",
    "munmap",
    "newfstatat",
    "openat",
    "poll",
    "prctl",
    "pread64",
    "prlimit64",
    "read",
    "recvfrom",
    "rseq",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_getaffinity",
    "sched_setaffinity",
    "sendto",
    "set_robust_list",
    "set_tid_address",
    "setsockopt",
    "shutdown",
    "sigaltstack",
    "socket",
    "socketpair",
    "statx",
    "write",
];

/// Seen with `strace -f` in tokio-postgres on a tokio current-thread runtime (tally's side
/// runtime) talking to PostgreSQL over TCP and a Unix socket, and in the embedded cluster's
/// tests: tally spawning initdb and postgres (as root, with a switch to an unprivileged user, and
/// as that user), committing, and stopping them; and in a full release build of tally in its
/// embedded mode under load.
const STORE_AND_EMBEDDED_SYSCALLS: &[&str] = &[
    "chdir",
    "chmod",
    "chown",
    "clock_nanosleep",
    "clone",
    "connect",
    "dup",
    "dup2",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "fadvise64",
    "fallocate",
    "fdatasync",
    "fstatfs",
    "fsync",
    "ftruncate",
    "getcwd",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getpid",
    "getppid",
    "getsockname",
    "getsockopt",
    "getuid",
    "kill",
    "lseek",
    "mkdir",
    "mremap",
    "pipe2",
    "pselect6",
    "pwrite64",
    "pwritev",
    "readlink",
    "rename",
    "restart_syscall",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setsid",
    "setuid",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "signalfd4",
    "statfs",
    "sync_file_range",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "vfork",
    "wait4",
];

/// What the OCI runtime itself calls after it installed the container's filter and before it
/// executes the entrypoint. Without no-new-privileges (Docker's default, and Kubernetes' unless
/// `allowPrivilegeEscalation: false`), runc installs the filter while it still holds its
/// capabilities, then: drops the bounding set and keeps capabilities across the uid switch
/// (prctl), switches to the image's user (setgroups, setgid, setuid; crun uses the setres*
/// variants), sets the container's capabilities (capset: runc failed with "unable to apply caps:
/// operation not permitted" when the profile lacked it), checks its parent (getppid), opens
/// /proc/self/fd and the exec FIFO, closes what the container must not inherit (close_range,
/// or getdents64 + fcntl + close), finds the entrypoint (faccessat2/newfstatat) and execve's it;
/// all the while its Go runtime uses futexes, signals, mmap, nanosleep and epoll. Every one of
/// them is in Docker's default profile.
const RUNTIME_START_SYSCALLS: &[&str] = &[
    "capget",
    "capset",
    "chdir",
    "close",
    "close_range",
    "epoll_ctl",
    "epoll_pwait",
    "execve",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fchdir",
    "fcntl",
    "fstat",
    "futex",
    "getdents64",
    "getpid",
    "getppid",
    "gettid",
    "kill",
    "madvise",
    "mmap",
    "munmap",
    "nanosleep",
    "newfstatat",
    "openat",
    "prctl",
    "read",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_yield",
    "setgid",
    "setgroups",
    "setresgid",
    "setresuid",
    "setuid",
    "sigaltstack",
    "tgkill",
    "write",
];

/// What Docker's default profile refuses to an unprivileged container; ours must too.
const MUST_STAY_BLOCKED: &[&str] = &[
    "bpf",
    "init_module",
    "kexec_load",
    "keyctl",
    "mount",
    "perf_event_open",
    "pivot_root",
    "ptrace",
    "reboot",
    "setns",
    "swapon",
    "umount2",
    "unshare",
];

const CLONE_THREAD_FLAGS: u64 = 0x003d_0f00; // VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
const CLONE_FORK_FLAGS: u64 = 0x0120_0011; // CHILD_SETTID|CHILD_CLEARTID|SIGCHLD
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;
const AF_UNIX: u64 = 1;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const ENOSYS: u64 = 38;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// compose.yaml

fn compose() -> Yaml {
    let text = read("compose.yaml");
    let mut docs = YamlLoader::load_from_str(&text).expect("compose.yaml is well-formed YAML");
    assert_eq!(docs.len(), 1, "compose.yaml holds one YAML document");
    docs.remove(0)
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(
        !service.is_badvalue(),
        "compose.yaml has no service `{name}`"
    );
    service
}

/// A service's environment, whether written as a map or as a list of `KEY=value`.
fn environment(service: &Yaml) -> HashMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(map) => map
            .iter()
            .map(|(k, v)| (yaml_scalar(k), yaml_scalar(v)))
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|item| {
                let text = yaml_scalar(item);
                let (k, v) = text.split_once('=').unwrap_or((&text, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("environment is neither a map nor a list: {other:?}"),
    }
}

fn yaml_scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A ulimit as (soft, hard): compose accepts a single number or `{soft, hard}`. -1 = unlimited.
fn ulimit(service: &Yaml, name: &str) -> (i64, i64) {
    let limit = &service["ulimits"][name];
    match limit {
        Yaml::Integer(n) => (*n, *n),
        Yaml::Hash(_) => (
            limit["soft"]
                .as_i64()
                .unwrap_or_else(|| panic!("ulimits.{name}.soft is not a number")),
            limit["hard"]
                .as_i64()
                .unwrap_or_else(|| panic!("ulimits.{name}.hard is not a number")),
        ),
        other => panic!("tally has no usable ulimits.{name}: {other:?}"),
    }
}

/// Seconds in a compose duration such as `30s`, `1m30s` or `90`.
fn duration_secs(text: &str) -> u64 {
    if let Ok(secs) = text.parse() {
        return secs;
    }
    let (mut total, mut number) = (0, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text}"));
        number.clear();
        total += match c {
            'h' => n * 3600,
            'm' => n * 60,
            's' => n,
            _ => panic!("bad duration {text}"),
        };
    }
    assert!(number.is_empty(), "bad duration {text}");
    total
}

#[test]
fn compose_gives_tally_what_io_uring_needs() {
    let compose = compose();
    let tally = service(&compose, "tally");

    let (soft, hard) = ulimit(tally, "memlock");
    for value in [soft, hard] {
        assert!(
            value == -1 || value >= 512 * 1024,
            "memlock {value} bytes: glommio needs at least 512 KiB"
        );
    }
    let (nofile_soft, nofile_hard) = ulimit(tally, "nofile");
    assert!(nofile_soft > 0 && nofile_hard >= nofile_soft);
    assert!(
        nofile_hard >= 65536,
        "nofile hard limit {nofile_hard} is too low for many connections"
    );

    let profiles: Vec<String> = tally["security_opt"]
        .as_vec()
        .expect("tally has security_opt")
        .iter()
        .map(yaml_scalar)
        .filter_map(|opt| {
            opt.strip_prefix("seccomp=")
                .or_else(|| opt.strip_prefix("seccomp:"))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(profiles.len(), 1, "one seccomp profile for tally");
    assert_ne!(
        profiles[0], "unconfined",
        "ship the profile, not unconfined"
    );
    let path = root().join(&profiles[0]);
    assert!(
        path.is_file(),
        "seccomp profile {} is missing",
        path.display()
    );
    assert_eq!(
        std::fs::canonicalize(&path).unwrap(),
        std::fs::canonicalize(root().join(SECCOMP_PROFILE)).unwrap(),
        "compose.yaml uses the profile this test checks"
    );
}

#[test]
fn compose_wires_tally_to_a_healthy_postgres() {
    let compose = compose();
    let tally = service(&compose, "tally");
    let postgres = service(&compose, "postgres");

    let env = environment(tally);
    let url = env.get("DATABASE_URL").expect("tally has DATABASE_URL");
    assert!(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        "DATABASE_URL {url}"
    );
    assert!(
        url.contains("@postgres:5432/") || url.contains("@postgres/"),
        "DATABASE_URL {url} should name the postgres service"
    );
    assert_eq!(
        tally["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy"),
        "tally waits for PostgreSQL to be healthy"
    );
    let build = &tally["build"];
    assert!(
        build.as_str() == Some(".") || build["context"].as_str() == Some("."),
        "tally is built from this directory's Dockerfile"
    );
    let ports: Vec<String> = tally["ports"]
        .as_vec()
        .expect("tally publishes a port")
        .iter()
        .map(yaml_scalar)
        .collect();
    assert!(
        ports.iter().any(|p| p.ends_with(":8080")),
        "ports {ports:?} should publish 8080"
    );

    // Shutdown: the container grace period outlasts tally's own drain.
    let grace = env
        .get("TALLY_SHUTDOWN_GRACE_SECS")
        .map_or(10, |s| s.parse::<u64>().expect("TALLY_SHUTDOWN_GRACE_SECS"));
    let stop = tally["stop_grace_period"]
        .as_str()
        .map(duration_secs)
        .expect("tally has stop_grace_period");
    assert!(
        stop > grace,
        "stop_grace_period {stop}s must exceed the drain of {grace}s"
    );

    assert!(postgres["image"]
        .as_str()
        .is_some_and(|image| image.starts_with("postgres:")));
    let penv = environment(postgres);
    assert!(penv.contains_key("POSTGRES_PASSWORD"));
    assert!(penv.contains_key("POSTGRES_DB"));
    let test = match &postgres["healthcheck"]["test"] {
        Yaml::Array(items) => items.iter().map(yaml_scalar).collect::<Vec<_>>().join(" "),
        Yaml::String(s) => s.clone(),
        other => panic!("postgres healthcheck test: {other:?}"),
    };
    assert!(test.contains("pg_isready"), "healthcheck {test}");
    // Its data lives in a named volume declared at the top level.
    let volume = postgres["volumes"]
        .as_vec()
        .and_then(|v| v.first())
        .map(yaml_scalar)
        .expect("postgres has a volume");
    let name = volume.split(':').next().unwrap();
    assert!(
        !compose["volumes"][name].is_badvalue(),
        "volume {name} is declared under top-level volumes"
    );
}

// ---------------------------------------------------------------------------------------------
// seccomp profile

fn profile() -> Value {
    serde_json::from_str(&read(SECCOMP_PROFILE)).expect("seccomp profile is well-formed JSON")
}

/// Whether the profile lets `name` through with these arguments: some ALLOW rule names it and all
/// of its argument conditions hold (libseccomp ORs rules and ANDs a rule's conditions).
fn allows(profile: &Value, name: &str, args: [u64; 6]) -> bool {
    rules_for(profile, name).any(|rule| {
        rule["action"] == "SCMP_ACT_ALLOW"
            && rule["args"].as_array().map_or(true, |conditions| {
                conditions.iter().all(|c| condition_holds(c, &args))
            })
    })
}

fn rules_for<'a>(profile: &'a Value, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    profile["syscalls"]
        .as_array()
        .expect("syscalls is a list")
        .iter()
        .filter(move |rule| {
            rule["names"]
                .as_array()
                .is_some_and(|names| names.iter().any(|n| n == name))
                || rule["name"] == name
        })
}

fn condition_holds(condition: &Value, args: &[u64; 6]) -> bool {
    let index = condition["index"].as_u64().expect("condition index") as usize;
    let value = condition["value"].as_u64().expect("condition value");
    let value_two = condition["valueTwo"].as_u64().unwrap_or(0);
    let arg = args[index];
    match condition["op"].as_str().expect("condition op") {
        "SCMP_CMP_NE" => arg != value,
        "SCMP_CMP_LT" => arg < value,
        "SCMP_CMP_LE" => arg <= value,
        "SCMP_CMP_EQ" => arg == value,
        "SCMP_CMP_GE" => arg >= value,
        "SCMP_CMP_GT" => arg > value,
        "SCMP_CMP_MASKED_EQ" => arg & value == value_two,
        other => panic!("unknown seccomp operator {other}"),
    }
}

fn first_arg(arg: u64) -> [u64; 6] {
    [arg, 0, 0, 0, 0, 0]
}

#[test]
fn seccomp_profile_is_an_allow_list_in_dockers_format() {
    let profile = profile();
    assert_eq!(
        profile["defaultAction"], "SCMP_ACT_ERRNO",
        "anything not listed fails with an errno"
    );
    assert!(profile["defaultErrnoRet"].as_u64().is_some_and(|e| e > 0));
    assert!(
        profile.get("architectures").is_none() || profile.get("archMap").is_none(),
        "Docker rejects a profile with both architectures and archMap"
    );
    let arches: HashMap<&str, Vec<&str>> = profile["archMap"]
        .as_array()
        .expect("archMap")
        .iter()
        .map(|entry| {
            let subs = entry["subArchitectures"]
                .as_array()
                .map(|s| s.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            (entry["architecture"].as_str().unwrap(), subs)
        })
        .collect();
    assert_eq!(
        arches.get("SCMP_ARCH_X86_64"),
        Some(&vec!["SCMP_ARCH_X86", "SCMP_ARCH_X32"])
    );
    assert_eq!(
        arches.get("SCMP_ARCH_AARCH64"),
        Some(&vec!["SCMP_ARCH_ARM"])
    );

    let mut unconditional = BTreeSet::new();
    for rule in profile["syscalls"].as_array().unwrap() {
        let action = rule["action"].as_str().expect("every rule has an action");
        assert!(
            action == "SCMP_ACT_ALLOW" || action == "SCMP_ACT_ERRNO",
            "unexpected action {action}"
        );
        for name in rule["names"].as_array().expect("every rule has names") {
            let name = name.as_str().unwrap();
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "odd system call name {name:?}"
            );
            if rule.get("args").is_none() {
                assert!(
                    unconditional.insert(name.to_owned()),
                    "{name} is listed twice"
                );
            }
        }
    }
    for name in MUST_STAY_BLOCKED {
        assert!(
            rules_for(&profile, name).next().is_none(),
            "{name} must stay blocked, as under Docker's default profile"
        );
    }
}

#[test]
fn seccomp_profile_allows_io_uring_and_what_tally_was_seen_to_use() {
    let profile = profile();
    for name in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allows(&profile, name, [0; 6]), "{name} must be allowed");
    }
    let mut missing = Vec::new();
    for name in TALLY_SYSCALLS.iter().chain(STORE_AND_EMBEDDED_SYSCALLS) {
        let args = match *name {
            "socket" => first_arg(AF_INET),
            "clone" => first_arg(CLONE_THREAD_FLAGS),
            _ => [0; 6],
        };
        if !allows(&profile, name, args) {
            missing.push(*name);
        }
    }
    assert!(missing.is_empty(), "not allowed: {missing:?}");

    // Sockets: TCP over IPv4 and IPv6 (listeners, PostgreSQL), Unix (embedded PostgreSQL).
    for family in [AF_INET, AF_INET6, AF_UNIX] {
        assert!(allows(&profile, "socket", first_arg(family)), "{family}");
    }
    // Threads and fork/exec, but no new namespaces.
    assert!(allows(&profile, "clone", first_arg(CLONE_FORK_FLAGS)));
    assert!(!allows(
        &profile,
        "clone",
        first_arg(CLONE_FORK_FLAGS | CLONE_NEWUSER)
    ));
    assert!(!allows(
        &profile,
        "clone",
        first_arg(CLONE_FORK_FLAGS | CLONE_NEWNET)
    ));
    // clone3 (glibc's first choice for threads and posix_spawn): either allowed, or ENOSYS so
    // glibc falls back to clone. Any other errno would make thread creation fail.
    let clone3_ok = allows(&profile, "clone3", [0; 6])
        || rules_for(&profile, "clone3").any(|rule| {
            rule["action"] == "SCMP_ACT_ERRNO" && rule["errnoRet"].as_u64() == Some(ENOSYS)
        });
    assert!(clone3_ok, "clone3 must be allowed or fail with ENOSYS");
}

#[test]
fn seccomp_profile_lets_the_container_runtime_start_the_container() {
    let profile = profile();
    let missing: Vec<&str> = RUNTIME_START_SYSCALLS
        .iter()
        .copied()
        .filter(|name| !allows(&profile, name, [0; 6]))
        .collect();
    assert!(
        missing.is_empty(),
        "the runtime (runc, crun) needs these before the entrypoint runs: {missing:?}"
    );
    // Go's runtime in runc starts threads with clone (CLONE_VM|FS|FILES|SIGHAND|SYSVSEM|THREAD).
    assert!(allows(&profile, "clone", first_arg(0x0005_0f00)));
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// The Dockerfile's instructions, continuation lines joined, comments dropped: (KEYWORD, rest).
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    assert!(current.is_empty(), "Dockerfile ends inside a continuation");
    instructions
}

/// Every `cargo build ...` invocation in a piece of shell (or Markdown), up to its command
/// separator or the backtick closing inline code.
fn cargo_builds(shell: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = shell;
    while let Some(at) = rest.find("cargo build") {
        let tail = &rest[at..];
        let end = tail.find(['&', ';', '|', '\n', '`']).unwrap_or(tail.len());
        found.push(tail[..end].split_whitespace().collect::<Vec<_>>().join(" "));
        rest = &tail[end..];
    }
    found
}

#[test]
fn dockerfile_wraps_the_ci_build_and_runs_unprivileged() {
    let instructions = dockerfile();
    let of = |keyword: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, rest)| rest.as_str())
            .collect()
    };

    let froms = of("FROM");
    assert!(froms.len() >= 2, "multi-stage build");
    assert!(
        froms[0].starts_with("rust:") && froms[0].contains("bookworm"),
        "build stage {}",
        froms[0]
    );
    assert!(
        froms.last().unwrap().starts_with("debian:bookworm-slim"),
        "runtime stage {}",
        froms.last().unwrap()
    );

    let builds: Vec<String> = of("RUN").iter().flat_map(|run| cargo_builds(run)).collect();
    assert_eq!(
        builds,
        vec![BUILD_COMMAND],
        "the image builds with exactly `{BUILD_COMMAND}`"
    );
    for build in cargo_builds(&read(".ci/run")) {
        assert_eq!(build, BUILD_COMMAND, "CI and the Dockerfile build alike");
    }

    // Instructions after the last FROM belong to the runtime image.
    let last_from = instructions.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let runtime = &instructions[last_from..];
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, rest)| rest.as_str())
        .expect("the runtime stage sets USER");
    let name = user.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "runs as {user}, not root");

    assert!(
        of("EXPOSE")
            .iter()
            .any(|e| e.split_whitespace().any(|p| p == "8080" || p == "8080/tcp")),
        "EXPOSE 8080"
    );
    let healthchecks = of("HEALTHCHECK");
    assert_eq!(healthchecks.len(), 1);
    assert!(
        healthchecks[0].contains("http://127.0.0.1:8080/api/v1/system/health"),
        "HEALTHCHECK {}",
        healthchecks[0]
    );
    assert_eq!(of("ENTRYPOINT"), vec![r#"["/usr/local/bin/tally"]"#]);
    assert_eq!(of("STOPSIGNAL"), vec!["SIGTERM"]);
    let env = of("ENV").join(" ");
    assert!(env.contains("TALLY_LISTEN=0.0.0.0:8080"), "ENV {env}");
    assert!(env.contains("TALLY_DATA_DIR=/var/lib/tally"), "ENV {env}");
    // The embedded-PostgreSQL default needs the server binaries in the runtime image.
    assert!(
        runtime
            .iter()
            .any(|(k, rest)| k == "RUN" && rest.contains("postgresql")),
        "the runtime image installs PostgreSQL's server binaries"
    );
    // ...but not Debian's postgresql-15 package itself: it depends on LLVM (JIT) and Perl,
    // ~180 MB the runtime never uses. Its programs are copied from a stage of their own.
    for (k, rest) in runtime {
        assert!(
            !(k == "RUN" && rest.contains("apt-get install") && rest.contains("postgresql-15")),
            "the runtime stage installs postgresql-15 (and with it LLVM): {rest}"
        );
    }
    assert!(
        runtime.iter().any(|(k, rest)| k == "COPY"
            && rest.starts_with("--from=postgresql")
            && rest.contains("/usr/lib/postgresql")),
        "the runtime stage copies PostgreSQL's programs from the postgresql stage"
    );
    // The binary in the image without its DWARF line tables (symbols kept for backtraces).
    assert!(
        of("RUN")
            .iter()
            .any(|run| run.contains(BUILD_COMMAND) && run.contains("strip --strip-debug")),
        "the build step strips debug info from the image's copy"
    );
}

#[test]
fn check_container_script_makes_the_images_the_files_start_from() {
    // deploy/check-container.sh tags its stand-in base images with the names the Dockerfile and
    // compose.yaml use, deriving the Rust one from `ARG RUST_VERSION`: keep them in step.
    let script = read("deploy/check-container.sh");
    let instructions = dockerfile();
    let version = instructions
        .iter()
        .find_map(|(k, rest)| {
            (k == "ARG")
                .then(|| rest.strip_prefix("RUST_VERSION="))
                .flatten()
        })
        .expect("the Dockerfile has ARG RUST_VERSION=<version>");
    assert!(!version.is_empty());
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, rest)| rest.split_whitespace().next().unwrap())
        .collect();
    for image in &froms {
        assert!(
            *image == "rust:${RUST_VERSION}-bookworm" || *image == "debian:bookworm-slim",
            "the check script has no stand-in for FROM {image}"
        );
    }
    assert!(script.contains(r#"print "rust:" $2 "-bookworm""#));
    let compose = compose();
    let postgres_image = service(&compose, "postgres")["image"].as_str().unwrap();
    assert!(
        script.contains(&format!("have_image {postgres_image}")),
        "the check script makes a stand-in for {postgres_image}"
    );
    // It builds the Dockerfile as it is, in the format that keeps HEALTHCHECK.
    assert!(script.contains("buildah bud --isolation chroot --format docker"));
}

#[test]
fn dockerignore_keeps_build_output_and_local_state_out() {
    let text = read(".dockerignore");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for wanted in ["target", ".git", ".tally", "bench/out"] {
        assert!(
            patterns.iter().any(|p| p.trim_end_matches('/') == wanted),
            ".dockerignore should exclude {wanted}"
        );
    }
    // vendor/: the patched glommio that Cargo.toml's [patch.crates-io] builds from.
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "src/",
        "vendor",
        "vendor/",
    ] {
        assert!(
            !patterns.contains(&needed),
            ".dockerignore must not exclude {needed}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// sysctl.conf

fn sysctls() -> Vec<(String, String)> {
    let text = read("sysctl.conf");
    let mut settings = Vec::new();
    let mut previous = "";
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            let (key, value) = trimmed
                .split_once(" = ")
                .unwrap_or_else(|| panic!("sysctl.conf:{}: not `key = value`", number + 1));
            assert!(
                !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || matches!(c, '.' | '_' | '-')),
                "sysctl.conf:{}: odd key {key:?}",
                number + 1
            );
            assert!(
                !value.trim().is_empty(),
                "sysctl.conf:{}: no value",
                number + 1
            );
            assert!(
                previous.starts_with('#'),
                "sysctl.conf:{}: {key} needs a comment above it",
                number + 1
            );
            settings.push((key.to_owned(), value.trim().to_owned()));
        }
        previous = trimmed;
    }
    settings
}

#[test]
fn sysctl_conf_is_commented_key_value_lines() {
    let settings = sysctls();
    let map: HashMap<&str, &str> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(map.len(), settings.len(), "a key is set twice");
    for key in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_tw_reuse",
        "net.core.netdev_max_backlog",
        "fs.file-max",
        "fs.nr_open",
    ] {
        assert!(map.contains_key(key), "sysctl.conf should set {key}");
    }
    assert_eq!(map.get("kernel.io_uring_disabled"), Some(&"0"));
    // tally listens with a backlog of 4096; the kernel caps it at somaxconn.
    let somaxconn: u64 = map["net.core.somaxconn"].parse().unwrap();
    assert!(
        somaxconn >= 4096,
        "somaxconn {somaxconn} caps tally's backlog"
    );

    // compose.yaml's nofile hard limit must fit under fs.nr_open.
    let nr_open: i64 = map["fs.nr_open"].parse().unwrap();
    let (_, nofile_hard) = ulimit(service(&compose(), "tally"), "nofile");
    assert!(
        nofile_hard <= nr_open,
        "nofile {nofile_hard} > fs.nr_open {nr_open}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests (deploy/k8s/)

const K8S_DIR: &str = "deploy/k8s";
/// Where deployment.yaml's Localhost seccomp profile is, relative to the kubelet's seccomp root.
const K8S_PROFILE: &str = "profiles/tally-io_uring.json";
/// The kubelet's seccomp root: Localhost profiles are looked up under it.
const KUBELET_SECCOMP_ROOT: &str = "/var/lib/kubelet/seccomp";

/// Every manifest `kubectl apply -f deploy/k8s/` applies (the top directory) and the optional
/// ones under it (one level down), as (path, document).
fn k8s_documents() -> Vec<(String, Yaml)> {
    let mut files = Vec::new();
    for dir in [K8S_DIR.to_owned(), format!("{K8S_DIR}/optional")] {
        let entries = std::fs::read_dir(root().join(&dir))
            .unwrap_or_else(|err| panic!("reading {dir}: {err}"));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(format!(
                    "{dir}/{}",
                    path.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no manifests in {K8S_DIR}");
    let mut documents = Vec::new();
    for file in files {
        let docs = YamlLoader::load_from_str(&read(&file))
            .unwrap_or_else(|err| panic!("{file} is not well-formed YAML: {err}"));
        for doc in docs {
            if !doc.is_null() {
                documents.push((file.clone(), doc));
            }
        }
    }
    documents
}

fn k8s_object<'a>(docs: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .map(|(_, doc)| doc)
        .find(|doc| {
            doc["kind"].as_str() == Some(kind) && doc["metadata"]["name"].as_str() == Some(name)
        })
        .unwrap_or_else(|| panic!("{K8S_DIR} has no {kind} {name}"))
}

fn container<'a>(pod_spec: &'a Yaml, name: &str) -> &'a Yaml {
    pod_spec["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A container's `env` entry named `name`.
fn env_entry<'a>(container: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    container["env"]
        .as_vec()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

/// tally's route table (src/api/routes.rs `route_table!`): path -> methods.
fn routes() -> HashMap<String, Vec<String>> {
    let text = read("src/api/routes.rs");
    let start = text
        .find("route_table! {")
        .expect("src/api/routes.rs has a route_table!");
    let body = &text[start..text[start..].find("\n}").map(|end| start + end).unwrap()];
    let mut routes = HashMap::new();
    for line in body.lines().skip(1) {
        let Some((_, rest)) = line.split_once("=>") else {
            continue;
        };
        let (path, methods) = rest.split_once(',').expect("route: path, [methods]");
        let methods = methods
            .trim()
            .trim_end_matches(';')
            .trim_matches(['[', ']'])
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        routes.insert(path.trim().trim_matches('"').to_owned(), methods);
    }
    assert!(routes.len() >= 4, "parsed routes: {routes:?}");
    routes
}

/// A clap default from src/config.rs: the `default_value` (or `default_value_t`) written with
/// the flag whose environment variable is `env`.
fn config_default(env: &str) -> String {
    let text = read("src/config.rs");
    let at = text
        .find(&format!("env = \"{env}\""))
        .unwrap_or_else(|| panic!("src/config.rs has no flag with env {env}"));
    let attribute = &text[at..at + text[at..].find(")]").expect("end of #[arg(...)]")];
    let value = attribute
        .split_once("default_value_t = ")
        .or_else(|| attribute.split_once("default_value = "))
        .unwrap_or_else(|| panic!("{env} has no default in src/config.rs"))
        .1;
    value
        .split([',', ')'])
        .next()
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_owned()
}

/// The port of an address such as `0.0.0.0:8080`.
fn port_of(address: &str) -> i64 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

#[test]
fn k8s_manifests_pass_the_schema_validator() {
    let docs = k8s_documents();
    for (file, doc) in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(
                doc[field].as_str().is_some(),
                "{file}: a document without {field}"
            );
        }
        assert!(
            doc["metadata"]["name"].as_str().is_some(),
            "{file}: a {} without a name",
            yaml_scalar(&doc["kind"])
        );
    }
    // kubernetes-validate (PyPI) carries the Kubernetes API's JSON schemas: it works offline.
    // --strict also rejects fields the API does not have (a misspelt probe setting, say).
    let mut files: Vec<&str> = docs.iter().map(|(file, _)| file.as_str()).collect();
    files.dedup();
    let run = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .args(&files)
        .current_dir(root())
        .output();
    match run {
        Ok(output) => assert!(
            output.status.success(),
            "kubernetes-validate rejects the manifests:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) if std::env::var_os("TALLY_REQUIRE_K8S_VALIDATOR").is_some() => {
            panic!("kubernetes-validate is required (TALLY_REQUIRE_K8S_VALIDATOR) but: {err}")
        }
        Err(err) => eprintln!(
            "kubernetes-validate not run ({err}): `pip install kubernetes-validate` to check \
             the manifests against the API's schemas"
        ),
    }
}

#[test]
fn k8s_probes_and_ports_match_tallys_routes_and_listen_port() {
    let docs = k8s_documents();
    let deployment = k8s_object(&docs, "Deployment", "tally");
    let pod = &deployment["spec"]["template"]["spec"];
    let tally = container(pod, "tally");
    let routes = routes();

    let default_port = port_of(&config_default("TALLY_LISTEN"));
    let listen_port = env_entry(tally, "TALLY_LISTEN")
        .and_then(|e| e["value"].as_str())
        .map_or(default_port, port_of);
    let ports = tally["ports"].as_vec().expect("tally declares its port");
    let http = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .expect("a port named http");
    assert_eq!(http["containerPort"].as_i64(), Some(listen_port));
    let resolve = |port: &Yaml| -> i64 {
        match port {
            Yaml::Integer(n) => *n,
            Yaml::String(name) => ports
                .iter()
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_i64())
                .unwrap_or_else(|| panic!("no container port named {name}")),
            other => panic!("port {other:?}"),
        }
    };

    let probe_path = |probe: &str, route: &str| {
        let get = &tally[probe]["httpGet"];
        let path = get["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe} is an httpGet probe"));
        assert_eq!(path, route, "{probe}");
        let methods = routes
            .get(path)
            .unwrap_or_else(|| panic!("{probe}: tally has no route {path}"));
        assert!(methods.iter().any(|m| m == "GET"), "{path} answers GET");
        assert_eq!(resolve(&get["port"]), listen_port, "{probe} port");
    };
    probe_path("livenessProbe", "/api/v1/system/health");
    probe_path("startupProbe", "/api/v1/system/health");
    probe_path("readinessProbe", "/api/v1/system/ready");

    let service = k8s_object(&docs, "Service", "tally");
    let target = &service["spec"]["ports"][0]["targetPort"];
    assert_eq!(
        resolve(target),
        listen_port,
        "the Service targets tally's port"
    );
    let labels = &pod_labels(deployment);
    for (what, selector) in [
        ("Service", &service["spec"]["selector"]),
        (
            "PodDisruptionBudget",
            &k8s_object(&docs, "PodDisruptionBudget", "tally")["spec"]["selector"]["matchLabels"],
        ),
        ("Deployment", &deployment["spec"]["selector"]["matchLabels"]),
    ] {
        let selector = selector
            .as_hash()
            .unwrap_or_else(|| panic!("{what} selector"));
        assert!(!selector.is_empty());
        for (key, value) in selector {
            assert_eq!(
                labels.get(&yaml_scalar(key)),
                Some(&yaml_scalar(value)),
                "the {what} selects tally's pods"
            );
        }
    }
}

fn pod_labels(deployment: &Yaml) -> HashMap<String, String> {
    deployment["spec"]["template"]["metadata"]["labels"]
        .as_hash()
        .expect("pod labels")
        .iter()
        .map(|(k, v)| (yaml_scalar(k), yaml_scalar(v)))
        .collect()
}

#[test]
fn k8s_deployment_is_secure_and_drains_before_it_is_killed() {
    let docs = k8s_documents();
    let deployment = k8s_object(&docs, "Deployment", "tally");
    let pod = &deployment["spec"]["template"]["spec"];
    let tally = container(pod, "tally");

    // The image's user, unprivileged, under the io_uring profile.
    let uid = dockerfile()
        .iter()
        .find_map(|(k, rest)| {
            (k == "RUN" && rest.contains("useradd")).then(|| {
                rest.split_once("--uid ")
                    .and_then(|(_, tail)| tail.split_whitespace().next())
                    .and_then(|n| n.parse::<i64>().ok())
                    .expect("useradd --uid N")
            })
        })
        .expect("the Dockerfile creates its user");
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(security["runAsUser"].as_i64(), Some(uid), "the image's uid");
    assert_eq!(
        security["seccompProfile"]["type"].as_str(),
        Some("Localhost")
    );
    assert_eq!(
        security["seccompProfile"]["localhostProfile"].as_str(),
        Some(K8S_PROFILE)
    );
    assert!(
        tally["securityContext"]["seccompProfile"].is_badvalue(),
        "tally's container keeps the pod's profile"
    );
    assert_eq!(
        tally["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );

    // The installer puts exactly deploy/seccomp-io_uring.json where the kubelet looks.
    let installer = k8s_object(&docs, "DaemonSet", "tally-seccomp-profile");
    let configmap = k8s_object(&docs, "ConfigMap", "tally-seccomp-profile");
    let (file_name, content) = configmap["data"]
        .as_hash()
        .and_then(|data| data.iter().next())
        .map(|(k, v)| (yaml_scalar(k), yaml_scalar(v)))
        .expect("the profile in the ConfigMap");
    assert_eq!(
        serde_json::from_str::<Value>(&content).expect("the ConfigMap's profile is JSON"),
        profile(),
        "the ConfigMap holds deploy/seccomp-io_uring.json (regenerate it: see its comment)"
    );
    let ds_pod = &installer["spec"]["template"]["spec"];
    let host_path = ds_pod["volumes"]
        .as_vec()
        .expect("installer volumes")
        .iter()
        .find_map(|v| v["hostPath"]["path"].as_str())
        .expect("the installer writes to a hostPath");
    assert_eq!(host_path, KUBELET_SECCOMP_ROOT);
    let script = yaml_scalar(&container(ds_pod, "install")["args"][0]);
    let (dir, name) = K8S_PROFILE.rsplit_once('/').unwrap();
    assert_eq!(file_name, name);
    assert!(
        script.contains(&format!("/{dir}")) && script.contains(&format!("/{name}")),
        "the installer writes {K8S_PROFILE}: {script}"
    );

    // The database comes from a Secret, which the example defines.
    let url = &env_entry(tally, "DATABASE_URL").expect("DATABASE_URL")["valueFrom"]["secretKeyRef"];
    let secret = k8s_object(&docs, "Secret", url["name"].as_str().expect("secret name"));
    let key = url["key"].as_str().expect("secret key");
    assert!(
        !secret["stringData"][key].is_badvalue() || !secret["data"][key].is_badvalue(),
        "the example Secret has {key}"
    );

    // Requests and limits, memory and CPU, for every container.
    for c in pod["containers"].as_vec().unwrap() {
        let name = yaml_scalar(&c["name"]);
        assert!(
            !c["resources"]["requests"]["memory"].is_badvalue(),
            "{name}: memory request"
        );
        assert!(
            !c["resources"]["limits"]["memory"].is_badvalue(),
            "{name}: memory limit"
        );
    }
    assert!(!tally["resources"]["requests"]["cpu"].is_badvalue());
    assert!(!tally["resources"]["limits"]["cpu"].is_badvalue());

    // Shutdown: preStop, then tally's drain, then the commit, all before SIGKILL.
    let grace: u64 = env_entry(tally, "TALLY_SHUTDOWN_GRACE_SECS")
        .and_then(|e| e["value"].as_str())
        .map_or_else(
            || config_default("TALLY_SHUTDOWN_GRACE_SECS"),
            str::to_owned,
        )
        .parse()
        .expect("TALLY_SHUTDOWN_GRACE_SECS is a number");
    let pre_stop: u64 = tally["lifecycle"]["preStop"]["exec"]["command"]
        .as_vec()
        .map(|cmd| cmd.iter().map(yaml_scalar).collect::<Vec<_>>())
        .filter(|cmd| cmd.first().map(String::as_str) == Some("sleep"))
        .and_then(|cmd| cmd.get(1).and_then(|secs| secs.parse().ok()))
        .expect("preStop sleeps while the endpoints update");
    let termination = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds") as u64;
    assert!(
        termination >= pre_stop + grace + 5,
        "terminationGracePeriodSeconds {termination} must cover preStop {pre_stop} s + drain \
         {grace} s + the last commit"
    );
}

// ---------------------------------------------------------------------------------------------
// CI and README.md

/// Non-comment lines of a shell script, trimmed.
fn commands(script: &str) -> Vec<&str> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn ci_runs_the_test_command() {
    let ci = read(".ci/run");
    assert!(
        commands(&ci).contains(&TEST_COMMAND),
        ".ci/run should run `{TEST_COMMAND}`"
    );
}

#[test]
fn readme_shows_the_commands_ci_runs() {
    let readme = read("README.md");
    assert!(
        readme.contains(TEST_COMMAND),
        "README.md should show the test command `{TEST_COMMAND}`"
    );
    assert!(
        readme.contains(RUN_COMMAND),
        "README.md should show the run command `{RUN_COMMAND}`"
    );
    assert!(commands(&read(".ci/run")).contains(&TEST_COMMAND));
    // Any release build README.md shows is the one the Dockerfile runs.
    for build in cargo_builds(&readme) {
        if build.starts_with("cargo build --release") {
            assert_eq!(
                build, BUILD_COMMAND,
                "README.md and the Dockerfile build alike"
            );
        }
    }
}

#[test]
fn duration_parsing() {
    assert_eq!(duration_secs("30s"), 30);
    assert_eq!(duration_secs("1m30s"), 90);
    assert_eq!(duration_secs("45"), 45);
}
