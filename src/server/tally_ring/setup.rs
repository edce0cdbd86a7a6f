//! Creating a core's [`Ring`]: the kernel ring with the task-run mode asked for (falling back
//! from DEFER to COOP when the kernel refuses it), the check that the kernel has every opcode
//! and feature the ring uses, and the receive buffers registered with it.
//!
//! Invariant: a [`Ring`] exists only if all of that succeeded; the caller falls back to
//! glommio's sockets otherwise ([`RingError`]). Touches only the new ring.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use io_uring::{opcode, IoUring};

use super::buffers::{BufferRing, RECV_BUFFERS};
use super::Ring;

/// Submission queue entries; completions get twice as many (the kernel's default).
const RING_ENTRIES: u32 = 4096;

/// How the ring was set up, for the log and the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskRun {
    /// SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG: completions are produced only when the
    /// driver enters the kernel to collect them.
    Defer,
    /// COOP_TASKRUN | TASKRUN_FLAG: completions are produced at the thread's next kernel exit.
    Coop,
}

/// Why tally's ring cannot be used here; the caller falls back to glommio's sockets.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot set up an io_uring ring: {0}")]
    Setup(io::Error),
    #[error("the kernel lacks io_uring {0} (Linux >= 6.0 has everything tally's ring uses)")]
    Missing(&'static str),
    #[error("cannot register the receive buffer ring: {0}")]
    Buffers(io::Error),
}

impl Ring {
    /// Sets up the ring with `taskrun`, falling back from DEFER to COOP when the kernel
    /// refuses it; checks the opcodes and features tally uses; registers the buffers.
    pub fn new(taskrun: TaskRun) -> Result<Rc<Ring>, RingError> {
        Self::with_buffers(taskrun, RECV_BUFFERS)
    }

    /// [`Ring::new`] with `buffers` receive buffers (a power of two).
    pub(super) fn with_buffers(taskrun: TaskRun, buffers: u16) -> Result<Rc<Ring>, RingError> {
        let (uring, taskrun) = match build_uring(taskrun) {
            Ok(uring) => (uring, taskrun),
            Err(err) if taskrun == TaskRun::Defer => {
                log::info!("io_uring DEFER_TASKRUN refused ({err}); using COOP_TASKRUN");
                (
                    build_uring(TaskRun::Coop).map_err(RingError::Setup)?,
                    TaskRun::Coop,
                )
            }
            Err(err) => return Err(RingError::Setup(err)),
        };
        check_opcodes(&uring)?;
        let buffers = BufferRing::new(buffers);
        buffers.register(&uring).map_err(RingError::Buffers)?;
        Ok(Rc::new(Ring {
            uring: RefCell::new(uring),
            taskrun,
            buffers,
            sockets: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            starved: RefCell::new(VecDeque::new()),
            accepted: RefCell::new(VecDeque::new()),
            acceptor: Cell::new(None),
            listener: Cell::new(None),
            accept_armed: Cell::new(false),
            kicked: Cell::new(false),
            driver: Cell::new(None),
            stopping: Cell::new(false),
            submitted: Cell::new(0),
            quiet_sends: RefCell::new(Vec::new()),
            park_polls: [Cell::new(None), Cell::new(None)],
            completions: Cell::new(Vec::with_capacity(256)),
            enters: Cell::new(0),
            parks: Cell::new(0),
            polls: Cell::new(0),
            late_sends: Cell::new(0),
            starvations: Cell::new(0),
            held_cancels: Cell::new(0),
        }))
    }
}

fn build_uring(taskrun: TaskRun) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    match taskrun {
        TaskRun::Defer => builder
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag(),
        TaskRun::Coop => builder.setup_coop_taskrun().setup_taskrun_flag(),
    };
    builder.setup_submit_all().build(RING_ENTRIES)
}

fn check_opcodes(uring: &IoUring) -> Result<(), RingError> {
    let mut probe = io_uring::Probe::new();
    uring
        .submitter()
        .register_probe(&mut probe)
        .map_err(RingError::Setup)?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
    ] {
        if !probe.is_supported(code) {
            return Err(RingError::Missing(name));
        }
    }
    // The park waits with a timeout (glommio's next timer) passed to io_uring_enter.
    if !uring.params().is_feature_ext_arg() {
        return Err(RingError::Missing("EXT_ARG"));
    }
    // Quiet sends post a completion only when they fail.
    if !uring.params().is_feature_skip_cqe_on_success() {
        return Err(RingError::Missing("CQE_SKIP"));
    }
    Ok(())
}
