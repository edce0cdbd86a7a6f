//! The embedded PostgreSQL cluster tally runs when no database URL is given (README.md,
//! "Configuration", `--database-url` and `--data-dir`): server binaries found on this machine,
//! a data directory initialised on first run, one `postgres` child process listening on a Unix
//! socket only, stopped when tally stops. Only process and file management lives here; the SQL
//! is in [`crate::counter::store`].
//!
//! Durability is PostgreSQL's own: `fsync` and `synchronous_commit` are forced on from the
//! command line (which outranks `postgresql.conf` and `ALTER SYSTEM`).

mod binaries;
mod run_as;

pub use binaries::PgBinaries;
pub use run_as::{ClusterUser, RunAs};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The superuser initdb creates; tally connects as it (trust auth, socket reachable only by the
/// cluster's owner and root).
pub const SUPERUSER: &str = "tally";
/// Unix socket only, so the port merely names the socket file; the socket directory is private.
const PORT: u16 = 5432;
const SOCKET_FILE: &str = ".s.PGSQL.5432";
/// `sizeof(sockaddr_un.sun_path)` is 108 on Linux, one byte of which is the NUL.
const SUN_PATH_MAX_BYTES: usize = 107;
/// Server output (start-up, shutdown, errors) goes here, inside the data directory.
const LOG_FILE: &str = "tally-postgres.log";
/// Crash recovery after a SIGKILL can take a while on a big WAL; 30 s is generous for a
/// one-row database.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Fast shutdown ends with a checkpoint, which is quick for one row.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to keep retrying while a previous postmaster on the same directory still holds its
/// lock file or shared memory (it is shutting down, e.g. after the old tally was killed).
const LOCK_RETRY_FOR: Duration = Duration::from_secs(10);
/// How much of the server log an error carries.
const LOG_TAIL_LINES: usize = 20;
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// initdb exits on SIGTERM once its current step is done (a second or so); then SIGKILL.
const INITDB_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the embedded cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (searched PATH, `pg_config --bindir` and \
         /usr/lib/postgresql/*/bin): install PostgreSQL (e.g. `apt-get install postgresql`) \
         or pass --database-url / DATABASE_URL"
    )]
    NoBinaries,
    #[error(
        "tally runs as root and PostgreSQL refuses to, but there is no `postgres` user to run it \
         as (tally does not use `nobody`: every other process running as `nobody` could use the \
         cluster's superuser socket): create a dedicated user (e.g. `useradd --system \
         --no-create-home --shell /usr/sbin/nologin postgres`), run tally as an unprivileged \
         user, or pass --database-url / DATABASE_URL"
    )]
    NoUnprivilegedUser,
    #[error(
        "{path} is a symbolic link: tally does not follow it for its PostgreSQL cluster (it \
         would take ownership of the target); make it a real directory or pass another \
         --data-dir"
    )]
    DataDirSymlink { path: PathBuf },
    #[error(
        "{path} holds files but no PostgreSQL cluster (no PG_VERSION): tally neither \
         initialises over them nor deletes them; empty or remove it, or pass another --data-dir"
    )]
    DataDirNotACluster { path: PathBuf },
    #[error("a stop was requested (SIGTERM/SIGINT) while the embedded PostgreSQL was starting")]
    Interrupted,
    #[error("{path} exists and is not a directory")]
    DataDirNotADirectory { path: PathBuf },
    #[error(
        "{path} belongs to uid {owner}, not to {user} or root: tally does not take over a \
         directory it did not create; chown it, remove it, or pass another --data-dir"
    )]
    DataDirForeignOwner {
        path: PathBuf,
        owner: u32,
        /// Who the cluster runs as, in words.
        user: String,
    },
    #[error(
        "PostgreSQL runs as user `{user}`, which cannot reach {data_dir}: it may not search \
         {blocked} (chmod o+x it, or choose a data directory under a world-searchable path)"
    )]
    DataDirUnreachable {
        user: String,
        data_dir: PathBuf,
        blocked: PathBuf,
    },
    #[error("cannot {action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("initdb failed for {data_dir} ({status}):\n{output}")]
    Initdb {
        data_dir: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error("PostgreSQL exited during start-up ({status}); end of {log}:\n{log_tail}")]
    Exited {
        status: ExitStatus,
        log: PathBuf,
        log_tail: String,
    },
    #[error("PostgreSQL did not accept connections within {seconds} s; end of {log}:\n{log_tail}")]
    StartTimeout {
        seconds: u64,
        log: PathBuf,
        log_tail: String,
    },
    #[error(
        "PostgreSQL did not stop within {seconds} s of a fast shutdown request; it was killed"
    )]
    StopTimeout { seconds: u64 },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedError {
    let path = path.to_owned();
    move |error| EmbeddedError::Io {
        action,
        path,
        error,
    }
}

/// A running (or, between [`EmbeddedPostgres::stop_server`] and
/// [`EmbeddedPostgres::start_server`], stopped) private cluster. Dropping it stops the server.
///
/// The child gets `PR_SET_PDEATHSIG = SIGINT`, so if tally dies, even by SIGKILL, the kernel
/// asks postgres for a fast shutdown. Linux sends that signal when the *thread* that spawned the
/// child exits, so call `start`/`start_server`/`restart` from a thread that lives as long as
/// the server should (tally: the main thread).
#[derive(Debug)]
pub struct EmbeddedPostgres {
    binaries: PgBinaries,
    /// Absolute, symlinks resolved.
    data_dir: PathBuf,
    /// The data directory itself when its path fits in `sun_path`, else a private `/tmp` dir.
    socket_dir: PathBuf,
    /// True when `socket_dir` was made by us under /tmp and must be removed at the end.
    socket_dir_is_private: bool,
    /// `Some` when tally runs as root.
    run_as: Option<RunAs>,
    /// The postmaster; `None` while stopped.
    child: Option<Child>,
    url: String,
}

impl EmbeddedPostgres {
    /// Finds the server binaries, initialises `data_dir` if it holds no cluster yet (trust auth,
    /// superuser `tally`, UTF8), starts `postgres` on a Unix socket only, and returns once it
    /// accepts connections. When tally is root, the cluster belongs to and runs as `postgres`.
    ///
    /// `data_dir` itself is never followed if it is a symlink, and a directory there that tally
    /// did not create must belong to the cluster's user or root: tally chowns and chmods it.
    pub fn start(data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        Self::start_interruptible(data_dir, &AtomicBool::new(false))
    }

    /// As [`start`](Self::start), but once `stop` is set (by a signal handler) it gives up
    /// within a poll interval or so with [`EmbeddedError::Interrupted`]: initdb is stopped and
    /// its temporary removed, a starting server gets a fast shutdown. Nothing keeps running.
    pub fn start_interruptible(
        data_dir: &Path,
        stop: &AtomicBool,
    ) -> Result<EmbeddedPostgres, EmbeddedError> {
        let binaries = PgBinaries::find().ok_or(EmbeddedError::NoBinaries)?;
        let run_as = match ClusterUser::for_current_process() {
            ClusterUser::TallyItself => None,
            ClusterUser::Unprivileged(user) => Some(user),
            ClusterUser::NoUnprivilegedAccount => return Err(EmbeddedError::NoUnprivilegedUser),
        };

        let data_dir = resolve_data_dir(data_dir)?;
        if let Some(user) = &run_as {
            check_reachable(user, &data_dir)?;
        }
        remove_interrupted_initdbs(&data_dir);
        // A cluster appears at `data_dir` only complete (initdb runs next to it, see
        // `initdb`), so one that is there is one to start.
        let initialised = match open_dir_nofollow(&data_dir)? {
            None => false,
            Some(dir) => {
                check_owner(&dir, &data_dir, run_as.as_ref())?;
                if let Some(user) = &run_as {
                    fchown(&dir, &data_dir, user)?;
                }
                holds_cluster(&data_dir)?
            }
        };

        let (socket_dir, socket_dir_is_private) = if socket_dir_fits(&data_dir) {
            (data_dir.clone(), false)
        } else {
            (private_socket_dir(run_as.as_ref())?, true)
        };
        let url = format!(
            "host={} port={PORT} user={SUPERUSER} dbname=postgres",
            quote_conninfo(&socket_dir.to_string_lossy())
        );

        let mut cluster = EmbeddedPostgres {
            binaries,
            data_dir,
            socket_dir,
            socket_dir_is_private,
            run_as,
            child: None,
            url,
        };
        if !initialised {
            cluster.initdb(stop)?;
        }
        cluster.start_server_interruptible(stop)?;
        Ok(cluster)
    }

    /// A tokio-postgres connection string for the cluster's superuser and `postgres` database.
    /// It stays valid across [`restart`](Self::restart).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The postmaster's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (fast shutdown, bounded wait, then SIGKILL) and removes the private
    /// socket directory if one was made.
    pub fn stop(mut self) -> Result<(), EmbeddedError> {
        let stopped = self.stop_server();
        self.remove_private_socket_dir();
        stopped
    }

    /// Stops then starts the server on the same directories; the URL does not change.
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.stop_server()?;
        self.start_server()
    }

    /// Fast shutdown (SIGINT: abort open transactions, checkpoint, exit) and wait up to
    /// [`STOP_TIMEOUT`]; past that, SIGKILL and [`EmbeddedError::StopTimeout`]. The directories
    /// stay, so [`start_server`](Self::start_server) can bring the same cluster back.
    pub fn stop_server(&mut self) -> Result<(), EmbeddedError> {
        match self.child.take() {
            Some(child) => stop_child(child, libc::SIGINT, STOP_TIMEOUT),
            None => Ok(()),
        }
    }

    /// Starts the server if it is not running and waits until it accepts connections. Retries
    /// for [`LOCK_RETRY_FOR`] while an older postmaster on this directory is still going away.
    pub fn start_server(&mut self) -> Result<(), EmbeddedError> {
        self.start_server_interruptible(&AtomicBool::new(false))
    }

    fn start_server_interruptible(&mut self, stop: &AtomicBool) -> Result<(), EmbeddedError> {
        if self.child.is_some() {
            return Ok(());
        }
        let give_up_on_lock = Instant::now() + LOCK_RETRY_FOR;
        loop {
            match self.spawn_and_wait_ready(stop) {
                Err(StartFailure::LockHeld(_))
                    if Instant::now() < give_up_on_lock && !stop.load(Ordering::SeqCst) =>
                {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(StartFailure::LockHeld(error) | StartFailure::Other(error)) => {
                    return Err(error)
                }
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// A command that runs as the cluster's user, from `/` (root's cwd may be unreadable to it).
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir("/").stdin(Stdio::null());
        if let Some(user) = &self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        default_stop_signals(&mut command);
        command
    }

    /// initdb into a fresh directory beside `data_dir`, renamed into place once initdb
    /// succeeded: a start killed meanwhile leaves only that temporary, which the next start
    /// removes ([`remove_interrupted_initdbs`]), never a half-made cluster at `data_dir`.
    fn initdb(&self, stop: &AtomicBool) -> Result<(), EmbeddedError> {
        let temp = initdb_temp_dir(&self.data_dir, std::process::id());
        log::info!(
            "initialising a PostgreSQL cluster in {} (via {})",
            self.data_dir.display(),
            temp.display()
        );
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&temp)
            .map_err(io_error("create", &temp))?;
        let made = self.initdb_into(&temp, stop).and_then(|()| {
            // rename(2) also replaces an empty directory at `data_dir`.
            fs::rename(&temp, &self.data_dir).map_err(io_error("rename", &temp))?;
            let parent = self.data_dir.parent().unwrap_or(Path::new("/"));
            File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error("sync", parent))
        });
        if made.is_err() {
            let _ = fs::remove_dir_all(&temp);
        }
        made
    }

    fn initdb_into(&self, temp: &Path, stop: &AtomicBool) -> Result<(), EmbeddedError> {
        if let Some(user) = &self.run_as {
            let dir = open_dir_nofollow(temp)?
                .ok_or_else(|| io_error("open", temp)(io::ErrorKind::NotFound.into()))?;
            fchown(&dir, temp, user)?;
        }
        let mut command = self.command(&self.binaries.initdb);
        // An initdb that outlives a killed tally would fill a directory nobody renames.
        die_with_parent(&mut command, libc::SIGTERM);
        // Its output goes to a file in memory, not a pipe: nothing has to drain it while this
        // thread polls `stop`.
        let initdb = &self.binaries.initdb;
        let mut output = memory_file(c"tally-initdb-output").map_err(io_error("create", initdb))?;
        let stdout = output.try_clone().map_err(io_error("create", initdb))?;
        let stderr = output.try_clone().map_err(io_error("create", initdb))?;
        let mut child = command
            .arg("--pgdata")
            .arg(temp)
            .arg("--auth=trust")
            .arg(format!("--username={SUPERUSER}"))
            .arg("--encoding=UTF8")
            .arg("--locale=C")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(io_error("run", initdb))?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if stop.load(Ordering::SeqCst) => {
                    // initdb cleans up and exits on SIGTERM, after the step it is in.
                    let _ = stop_child(child, libc::SIGTERM, INITDB_STOP_TIMEOUT);
                    return Err(EmbeddedError::Interrupted);
                }
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io_error("wait for", initdb)(error));
                }
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut text = String::new();
        let _ = output
            .seek(SeekFrom::Start(0))
            .and_then(|_| output.read_to_string(&mut text));
        Err(EmbeddedError::Initdb {
            data_dir: self.data_dir.clone(),
            status,
            output: last_lines(&text, LOG_TAIL_LINES),
        })
    }

    fn spawn_and_wait_ready(&self, stop: &AtomicBool) -> Result<Child, StartFailure> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("open", &log_path))?;
        if let Some(user) = &self.run_as {
            chown(&log_path, user)?;
        }
        // Only what this attempt writes counts when deciding why it failed.
        let log_start = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        let log_for_stderr = log.try_clone().map_err(io_error("open", &log_path))?;

        let mut command = self.command(&self.binaries.postgres);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories=\"{}\"",
                self.socket_dir.to_string_lossy()
            ))
            .arg("-c")
            .arg(format!("port={PORT}"))
            // Trust auth: the socket is the only door, so it is the owner's alone, whatever
            // the mode of the directory it sits in (root, tally's user when root, bypasses it).
            .args(["-c", "unix_socket_permissions=0700"])
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "logging_collector=off"])
            .stdout(log)
            .stderr(log_for_stderr)
            // Its own process group: a Ctrl-C on tally's terminal must not reach postgres before
            // tally has committed its last batch; tally stops it afterwards.
            .process_group(0);
        // SIGINT: a fast shutdown.
        die_with_parent(&mut command, libc::SIGINT);
        let mut child = command
            .spawn()
            .map_err(io_error("run", &self.binaries.postgres))?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let log_tail = read_log_since(&log_path, log_start);
                    let error = EmbeddedError::Exited {
                        status,
                        log: log_path,
                        log_tail: log_tail.clone(),
                    };
                    return Err(if lock_held_by_older_server(&log_tail) {
                        StartFailure::LockHeld(error)
                    } else {
                        StartFailure::Other(error)
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io_error("wait for", &self.binaries.postgres)(error).into());
                }
            }
            if self.accepts_connections(child.id()) {
                log::info!(
                    "PostgreSQL (pid {}) is up on {}",
                    child.id(),
                    self.socket_dir.display()
                );
                return Ok(child);
            }
            if stop.load(Ordering::SeqCst) {
                stop_unready_child(child)?;
                return Err(StartFailure::Other(EmbeddedError::Interrupted));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartFailure::Other(EmbeddedError::StartTimeout {
                    seconds: START_TIMEOUT.as_secs(),
                    log_tail: read_log_since(&log_path, log_start),
                    log: log_path,
                }));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The test `pg_ctl start --wait` uses: `postmaster.pid` names our child and its status
    /// line (line 8, PostgreSQL 10+) says `ready`; and the socket exists.
    fn accepts_connections(&self, pid: u32) -> bool {
        let Ok(pid_file) = fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = pid_file.lines().collect();
        let names_child = lines.first().map(|line| line.trim()) == Some(&*pid.to_string());
        let ready = lines.get(7).map(|line| line.trim()) == Some("ready");
        names_child && ready && self.socket_dir.join(SOCKET_FILE).exists()
    }

    fn remove_private_socket_dir(&mut self) {
        if self.socket_dir_is_private {
            let _ = fs::remove_dir_all(&self.socket_dir);
            self.socket_dir_is_private = false;
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop_server() {
            log::warn!("stopping the embedded PostgreSQL: {error}");
        }
        self.remove_private_socket_dir();
    }
}

enum StartFailure {
    /// Another postmaster still holds this directory's lock file or shared memory.
    LockHeld(EmbeddedError),
    Other(EmbeddedError),
}

impl From<EmbeddedError> for StartFailure {
    fn from(error: EmbeddedError) -> Self {
        StartFailure::Other(error)
    }
}

/// PostgreSQL's messages when an older postmaster (alive, or its backends) still owns the
/// directory: `lock file "postmaster.pid" already exists`, the same for the socket's lock file,
/// and `pre-existing shared memory block ... is still in use`.
fn lock_held_by_older_server(log_tail: &str) -> bool {
    (log_tail.contains("lock file") && log_tail.contains("already exists"))
        || log_tail.contains("pre-existing shared memory block")
}

/// Sends `signal` (SIGINT: PostgreSQL's fast shutdown) and waits up to `timeout`; past that,
/// SIGKILL and [`EmbeddedError::StopTimeout`].
fn stop_child(
    child: Child,
    signal_number: libc::c_int,
    timeout: Duration,
) -> Result<(), EmbeddedError> {
    stop_child_escalating(child, signal_number, None, timeout)
}

/// [`stop_child`], with `escalate`: if the child still runs after its delay, its signal too.
fn stop_child_escalating(
    mut child: Child,
    signal_number: libc::c_int,
    mut escalate: Option<(Duration, libc::c_int)>,
    timeout: Duration,
) -> Result<(), EmbeddedError> {
    signal(&child, signal_number);
    let started = Instant::now();
    while started.elapsed() < timeout {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(_) => break,
        }
        if let Some((after, next)) = escalate.filter(|&(after, _)| started.elapsed() >= after) {
            log::warn!(
                "PostgreSQL (pid {}) still runs {after:?} after signal {signal_number}; sending \
                 signal {next}",
                child.id()
            );
            signal(&child, next);
            escalate = None;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(EmbeddedError::StopTimeout {
        seconds: timeout.as_secs(),
    })
}

/// How long a postmaster stopped before it was ready gets for its fast shutdown before it is
/// told to shut down immediately.
const UNREADY_FAST_STOP: Duration = Duration::from_secs(5);

/// Stops a postmaster that has not become ready (a stop request during start-up): a fast
/// shutdown, then, if it has not ended after [`UNREADY_FAST_STOP`], an immediate one
/// (SIGQUIT), then SIGKILL at [`STOP_TIMEOUT`]. A server that never accepted a connection
/// has nothing an immediate shutdown could lose (the next start replays its WAL). The signal
/// comes right after the spawn, in the postmaster's first moments, where any loss of it
/// (see [`default_stop_signals`] for the one found) would otherwise cost the whole 30 s.
fn stop_unready_child(child: Child) -> Result<(), EmbeddedError> {
    stop_unready_child_within(child, UNREADY_FAST_STOP)
}

fn stop_unready_child_within(child: Child, fast_stop: Duration) -> Result<(), EmbeddedError> {
    stop_child_escalating(
        child,
        libc::SIGINT,
        Some((fast_stop, libc::SIGQUIT)),
        STOP_TIMEOUT,
    )
}

/// An anonymous file in memory (`memfd_create`), gone when its last descriptor closes.
fn memory_file(name: &std::ffi::CStr) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: `name` is NUL-terminated; memfd_create has no other preconditions.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The signals tally stops its PostgreSQL programs with start at their default action in the
/// child, whatever tally inherited. An ignored signal stays ignored across `exec` (std resets
/// only SIGPIPE and the mask), and a shell starts every background command (`tally &` in a
/// script) with SIGINT and SIGQUIT ignored: a fast-shutdown request that reached a postmaster
/// before it installed its own handler was then dropped, and the postmaster ran on until the
/// 30 s stop timeout killed it (seen as a flaky test when the suite ran in the background).
fn default_stop_signals(command: &mut Command) {
    // SAFETY: the closure only calls signal(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            for stop in STOP_SIGNALS {
                if libc::signal(stop, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// What [`default_stop_signals`] resets.
const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP];

/// The child gets `signal` when the thread that spawned it ends (PR_SET_PDEATHSIG), even if
/// tally is SIGKILLed.
fn die_with_parent(command: &mut Command, signal: libc::c_int) {
    // SAFETY: getpid is async-signal-safe; the closure below only calls prctl and getppid
    // (both async-signal-safe) and builds an io::Error from an errno without allocating.
    let parent = unsafe { libc::getpid() };
    unsafe {
        command.pre_exec(move || {
            // std has already switched uid/gid here; a credential change would clear the
            // death signal, which is why it is set now and not earlier.
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet, so the
        // pid still names it.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

fn chown(path: &Path, user: &RunAs) -> Result<(), EmbeddedError> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io_error("chown", path))
}

/// `data_dir` made absolute with its parent's symlinks resolved (the parent is created if
/// missing); its last component is kept as it is, for [`open_dir_nofollow`] to judge.
fn resolve_data_dir(data_dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let Some(name) = data_dir.file_name() else {
        return Err(io_error("use", data_dir)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the data directory's path must end in a name",
        )));
    };
    let parent = match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    let parent = fs::canonicalize(parent).map_err(io_error("resolve", parent))?;
    Ok(parent.join(name))
}

/// Opens the directory `path` itself, `None` if nothing is there: a symlink there is refused,
/// not followed (`O_NOFOLLOW`). Acting on the descriptor (fchown, fstat), not on the path again,
/// means a symlink swapped in meanwhile changes nothing.
fn open_dir_nofollow(path: &Path) -> Result<Option<File>, EmbeddedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|error| {
            // With O_DIRECTORY a symlink fails as ENOTDIR, without it as ELOOP.
            let is_symlink = fs::symlink_metadata(path).is_ok_and(|meta| meta.is_symlink());
            match error.raw_os_error() {
                _ if is_symlink => EmbeddedError::DataDirSymlink {
                    path: path.to_owned(),
                },
                Some(libc::ENOTDIR) => EmbeddedError::DataDirNotADirectory {
                    path: path.to_owned(),
                },
                _ => io_error("open", path)(error),
            }
        });
    match opened {
        Ok(dir) => Ok(Some(dir)),
        Err(EmbeddedError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

fn fchown(dir: &File, path: &Path, user: &RunAs) -> Result<(), EmbeddedError> {
    std::os::unix::fs::fchown(dir, Some(user.uid), Some(user.gid)).map_err(io_error("chown", path))
}

/// Whether the existing directory `data_dir` holds a cluster (`PG_VERSION`) or is empty (one is
/// made there); anything else is not tally's to overwrite or delete.
fn holds_cluster(data_dir: &Path) -> Result<bool, EmbeddedError> {
    if data_dir.join("PG_VERSION").exists() {
        return Ok(true);
    }
    let mut entries = fs::read_dir(data_dir).map_err(io_error("list", data_dir))?;
    match entries.next() {
        None => Ok(false),
        Some(_) => Err(EmbeddedError::DataDirNotACluster {
            path: data_dir.to_owned(),
        }),
    }
}

/// Where `initdb` builds the cluster for `data_dir`: beside it (same file system, so the
/// rename is atomic), named after the process doing it.
fn initdb_temp_dir(data_dir: &Path, pid: u32) -> PathBuf {
    let mut name = initdb_temp_prefix(data_dir);
    name.push_str(&pid.to_string());
    data_dir.with_file_name(name)
}

fn initdb_temp_prefix(data_dir: &Path) -> String {
    let name = data_dir.file_name().unwrap_or_default().to_string_lossy();
    format!(".{name}.initdb-")
}

/// Removes the temporaries of initdbs that did not finish: those of processes that are gone,
/// and any named after this process (a container's tally is pid 1 on every start).
fn remove_interrupted_initdbs(data_dir: &Path) {
    let prefix = initdb_temp_prefix(data_dir);
    let Some(Ok(entries)) = data_dir.parent().map(fs::read_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && process_exists(pid) {
            continue;
        }
        let path = entry.path();
        log::warn!(
            "removing {}: left by an initdb that did not finish",
            path.display()
        );
        if let Err(error) = fs::remove_dir_all(&path) {
            log::warn!("cannot remove {}: {error}", path.display());
        }
    }
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A directory tally did not create must already belong to the cluster's user or to root.
fn check_owner(dir: &File, path: &Path, run_as: Option<&RunAs>) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    let owner = dir.metadata().map_err(io_error("inspect", path))?.uid();
    let (cluster_uid, user) = match run_as {
        Some(user) => (user.uid, format!("the cluster's user `{}`", user.name)),
        // SAFETY: geteuid has no preconditions and cannot fail.
        None => (unsafe { libc::geteuid() }, "tally's own user".to_owned()),
    };
    if owner == cluster_uid || owner == 0 {
        return Ok(());
    }
    Err(EmbeddedError::DataDirForeignOwner {
        path: path.to_owned(),
        owner,
        user,
    })
}

/// Every ancestor of `data_dir` must be searchable by the cluster's user.
fn check_reachable(user: &RunAs, data_dir: &Path) -> Result<(), EmbeddedError> {
    for dir in data_dir.ancestors().skip(1) {
        if !user.can_search(dir).map_err(io_error("inspect", dir))? {
            return Err(EmbeddedError::DataDirUnreachable {
                user: user.name.clone(),
                data_dir: data_dir.to_owned(),
                blocked: dir.to_owned(),
            });
        }
    }
    Ok(())
}

/// Whether the socket can live in `dir`: `<dir>/.s.PGSQL.5432` fits in `sun_path`, and the
/// path survives quoting in `unix_socket_directories` and the connection string.
fn socket_dir_fits(dir: &Path) -> bool {
    match dir.to_str() {
        Some(text) => {
            text.len() + 1 + SOCKET_FILE.len() <= SUN_PATH_MAX_BYTES && !text.contains('"')
        }
        None => false,
    }
}

/// A fresh `/tmp/tally-pg-XXXXXX` (mode 0700, owned by the cluster's user).
fn private_socket_dir(run_as: Option<&RunAs>) -> Result<PathBuf, EmbeddedError> {
    let mut template = *b"/tmp/tally-pg-XXXXXX\0";
    // SAFETY: template is a writable NUL-terminated buffer ending in six X, as mkdtemp requires.
    let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    let fallback = PathBuf::from("/tmp/tally-pg-XXXXXX");
    if made.is_null() {
        return Err(io_error("create", &fallback)(io::Error::last_os_error()));
    }
    let name = &template[..template.len() - 1];
    let dir = PathBuf::from(String::from_utf8_lossy(name).into_owned());
    if let Some(user) = run_as {
        chown(&dir, user)?;
    }
    Ok(dir)
}

/// A conninfo value in single quotes, escaping `\` and `'` (libpq's rules, which
/// tokio-postgres follows), when it holds anything that would end a bare value.
fn quote_conninfo(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// The last lines the server wrote since byte `start` of its log (at most 8 KiB read).
fn read_log_since(path: &Path, start: u64) -> String {
    const MAX_BYTES: u64 = 8 * 1024;
    let Ok(mut file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let end = file.metadata().map(|meta| meta.len()).unwrap_or(start);
    let from = start.max(end.saturating_sub(MAX_BYTES));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(cannot read {})", path.display());
    }
    last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES)
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that ignores the fast-shutdown signal is shut down by the next one, well
    /// before the stop timeout.
    #[test]
    fn an_unready_server_that_ignores_a_fast_shutdown_is_stopped_immediately() {
        let mut command = Command::new("sh");
        command.args(["-c", "trap '' INT; while :; do sleep 0.05; done"]);
        // The test's own SIGQUIT may be ignored (a background job of a shell), and a shell
        // cannot trap or reset a signal ignored on entry.
        default_stop_signals(&mut command);
        let child = command.spawn().expect("sh");
        // Let the shell install its trap first.
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let stopped = stop_unready_child_within(child, Duration::from_millis(300));
        assert!(stopped.is_ok(), "{stopped:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    /// A PostgreSQL program starts with the stop signals at their default action even when
    /// tally was started with them ignored (as `tally &` in a script does).
    #[test]
    fn programs_start_with_the_stop_signals_at_their_default_action() {
        let mut command = Command::new("sh");
        // SigIgn in /proc/self/status is the mask of ignored signals (bit N-1 for signal N).
        command
            .args(["-c", "grep SigIgn /proc/self/status"])
            .stdout(Stdio::piped());
        // SAFETY: signal(2) is async-signal-safe. The child ignores them before the reset.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                Ok(())
            });
        }
        default_stop_signals(&mut command);
        let out = command.output().expect("sh");
        let line = String::from_utf8_lossy(&out.stdout);
        let mask = u64::from_str_radix(line.trim().trim_start_matches("SigIgn:").trim(), 16)
            .expect("SigIgn mask");
        for stop in STOP_SIGNALS {
            assert_eq!(mask & (1 << (stop - 1)), 0, "signal {stop} ignored: {line}");
        }
    }

    #[test]
    fn no_binaries_error_says_how_to_fix_it() {
        let message = EmbeddedError::NoBinaries.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("--database-url"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
    }

    #[test]
    fn long_data_dirs_do_not_host_the_socket() {
        assert!(socket_dir_fits(Path::new("/work/app/.tally/pg")));
        let long = format!("/tmp/{}", "d".repeat(100));
        assert!(!socket_dir_fits(Path::new(&long)));
        // Exactly at the limit: 93 + 1 + 13 = 107 bytes.
        let edge = format!("/{}", "e".repeat(92));
        assert!(socket_dir_fits(Path::new(&edge)));
        let over = format!("/{}", "e".repeat(93));
        assert!(!socket_dir_fits(Path::new(&over)));
    }

    #[test]
    fn conninfo_values_are_quoted_only_when_needed() {
        assert_eq!(quote_conninfo("/tmp/x"), "/tmp/x");
        assert_eq!(quote_conninfo("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(quote_conninfo("/tmp/it's"), "'/tmp/it\\'s'");
    }

    #[test]
    fn lock_messages_are_recognised() {
        assert!(lock_held_by_older_server(
            "FATAL:  lock file \"postmaster.pid\" already exists\nHINT: ..."
        ));
        assert!(lock_held_by_older_server(
            "FATAL:  pre-existing shared memory block (key 1, ID 2) is still in use"
        ));
        assert!(!lock_held_by_older_server(
            "FATAL:  data directory has wrong ownership"
        ));
    }
}
