//! tally's own io_uring ring, one per core, for connection I/O (`--io uring`).
//!
//! glommio stays the executor (it pins the core, runs the connection tasks, timers and the
//! owner-core channels); this ring does the sockets the way the kernel offers for servers:
//!
//! - one multishot accept per listener: one SQE for every connection it will ever accept;
//! - one multishot recv per connection into a ring of provided buffers ([`BufferRing`]): no
//!   poll is re-armed per request, and an idle connection holds no read buffer (the kernel
//!   picks one only when bytes arrive);
//! - sends as SQEs, queued by every connection that answered during a pass and submitted with
//!   one `io_uring_enter` for all of them, which also reaps the completions.
//!
//! One event loop per core: glommio runs the tasks, and when it has nothing to run it sleeps
//! on this ring, through the park hook of tally's patch of glommio
//! (`vendor/glommio/TALLY-PATCH.md`, [`ParkHook`]). Parking submits everything the tasks
//! queued, arms a one-shot poll on each of glommio's rings (so glommio's own I/O, its timers
//! and the eventfd other threads write to wake it still end the sleep) and waits, all in one
//! `io_uring_enter`. Between parks, [`ParkHook::poll`] submits only when tasks are still
//! runnable (so a busy core does not wait for a park to send). The [`Ring::drive`] task hands
//! completions to the streams; it never enters the kernel itself except to flush a full
//! submission queue or an overflowed completion queue.
//!
//! Ownership rule: the kernel may use a connection's socket and send buffer until the last
//! completion of its requests arrives, so both live in a [`Socket`] kept in the ring's table
//! until then, whatever became of the task that used it. Dropping a [`RingStream`] cancels
//! what is in flight; the socket is closed when the last completion arrives.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::ParkHook;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Submission queue entries; completions get twice as many (the kernel's default).
const RING_ENTRIES: u32 = 4096;
/// Receive buffers per core, and their size. A request is usually one buffer; the pool is
/// shared by all connections of the core and is the most memory receiving can take
/// (4 MiB per core).
const RECV_BUFFERS: u16 = 1024;
const RECV_BUFFER_BYTES: usize = 4096;
/// The provided-buffer group of the receive buffers.
const BUFFER_GROUP: u16 = 0;
/// A connection that is not reading (answering, writing to a slow client) while its client
/// keeps sending has its receive cancelled once it holds this many buffers, so one client
/// cannot take the pool from the others; reading re-arms it.
const MAX_HELD_BUFFERS: usize = 8;

/// `user_data`: the operation in the top bits, the socket's table index below.
const OP_SHIFT: u32 = 56;
const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
/// Cancellations and closes whose completions need no handling.
const OP_IGNORED: u64 = 4;
/// The park's poll on one of glommio's rings; the index is its slot in `Ring::park_polls`.
const OP_PARK_POLL: u64 = 5;
const INDEX_MASK: u64 = (1 << OP_SHIFT) - 1;

fn user_data(op: u64, index: usize) -> u64 {
    (op << OP_SHIFT) | index as u64
}

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

/// The receive buffers: one allocation of `RECV_BUFFERS` x `RECV_BUFFER_BYTES`, handed to the
/// kernel through a registered buffer ring (IORING_REGISTER_PBUF_RING). The kernel takes a
/// buffer from the ring's head for each receive; a buffer goes back at the tail once its bytes
/// were copied out.
struct BufferRing {
    /// The ring of `io_uring_buf` entries, page aligned, `RECV_BUFFERS` long.
    entries: *mut types::BufRingEntry,
    entries_layout: std::alloc::Layout,
    memory: *mut u8,
    memory_layout: std::alloc::Layout,
    /// Buffers in the ring (a power of two).
    count: u16,
    /// Our copy of the ring's tail (the kernel reads the shared one).
    tail: Cell<u16>,
}

impl BufferRing {
    fn new(count: u16) -> BufferRing {
        assert!(
            count.is_power_of_two(),
            "a buffer ring's length is a power of two"
        );
        let entries_layout = std::alloc::Layout::from_size_align(
            count as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .expect("buffer ring layout");
        let memory_layout =
            std::alloc::Layout::from_size_align(count as usize * RECV_BUFFER_BYTES, 4096)
                .expect("receive buffer layout");
        // SAFETY: both layouts have non-zero sizes. Zeroed entries are valid (the tail in
        // entry 0 starts at 0); the buffers are only ever written by the kernel before read.
        let (entries, memory) = unsafe {
            (
                std::alloc::alloc_zeroed(entries_layout).cast::<types::BufRingEntry>(),
                std::alloc::alloc(memory_layout),
            )
        };
        if entries.is_null() || memory.is_null() {
            std::alloc::handle_alloc_error(memory_layout);
        }
        // Fault the pool in now: the kernel takes buffers round the ring, so all of it becomes
        // resident soon under load anyway. Counted once at start-up, it is a fixed cost per
        // core (README.md, Memory), not growth that looks like a per-connection leak.
        // SAFETY: `memory` is a fresh allocation of `memory_layout.size()` bytes.
        unsafe { std::ptr::write_bytes(memory, 0, memory_layout.size()) };
        let ring = BufferRing {
            entries,
            entries_layout,
            memory,
            memory_layout,
            count,
            tail: Cell::new(0),
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        ring
    }

    /// Puts buffer `bid` at the tail (made visible to the kernel by `publish`).
    fn push(&self, bid: u16) {
        let tail = self.tail.get();
        let slot = (tail & (self.count - 1)) as usize;
        // SAFETY: `slot` < count, the ring's length; the kernel only reads entries
        // between its head and the published tail, and this one is past the published tail.
        unsafe {
            let entry = &mut *self.entries.add(slot);
            entry.set_addr(self.buffer(bid).as_ptr() as u64);
            entry.set_len(RECV_BUFFER_BYTES as u32);
            entry.set_bid(bid);
        }
        self.tail.set(tail.wrapping_add(1));
    }

    /// Publishes the pushed buffers to the kernel (a release store of the shared tail).
    fn publish(&self) {
        // SAFETY: the tail field lives in entry 0, inside the allocation; the kernel reads it
        // with an acquire load, so the entries written before are visible to it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut();
            std::sync::atomic::AtomicU16::from_ptr(tail)
                .store(self.tail.get(), std::sync::atomic::Ordering::Release);
        }
    }

    fn buffer(&self, bid: u16) -> &[u8] {
        debug_assert!(bid < self.count);
        // SAFETY: bid < count (the kernel only hands out the ids we gave it), so the range is
        // inside the allocation.
        unsafe {
            std::slice::from_raw_parts(
                self.memory.add(bid as usize * RECV_BUFFER_BYTES),
                RECV_BUFFER_BYTES,
            )
        }
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts. `Ring` drops this only after the
        // ring's fd is closed and no receive is in flight (see `Ring::finish`).
        unsafe {
            std::alloc::dealloc(self.entries.cast(), self.entries_layout);
            std::alloc::dealloc(self.memory, self.memory_layout);
        }
    }
}

/// A received buffer not yet copied out by its connection.
struct Held {
    bid: u16,
    len: usize,
    read: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Recv {
    /// No receive in the kernel: the connection's next read arms one.
    Idle,
    Armed,
    /// Cancelled (too many buffers held); its last completion has not arrived yet.
    Cancelling,
    /// The pool ran dry (ENOBUFS): re-armed when buffers come back.
    Starved,
}

/// A connection's socket and everything the kernel may still use for it.
struct Socket {
    fd: RawFd,
    index: usize,
    held: VecDeque<Held>,
    recv: Recv,
    /// The connection once held `MAX_HELD_BUFFERS`: it receives one buffer per request from
    /// now on. A multishot receive runs up to 32 times in a row inside the kernel while its
    /// socket has data (and again within the same kernel entry when it is re-queued), so a
    /// client that sends far ahead of what its connection reads could take the whole pool
    /// between two looks at the completions.
    capped: bool,
    /// The peer closed (a receive of 0 bytes), or receiving failed.
    eof: bool,
    error: Option<i32>,
    reader: Option<Waker>,
    /// What a send in flight sends from: owned here so it outlives a dropped writer.
    send_buf: Vec<u8>,
    /// Bytes of `send_buf` the kernel has taken.
    sent: usize,
    sending: bool,
    /// The send in flight is quiet (see [`Ring::send`]), queued before submission `epoch`.
    quiet_epoch: Option<u64>,
    send_error: Option<i32>,
    writer: Option<Waker>,
    /// Requests in the kernel that will still post a completion for this socket.
    in_flight: u32,
    /// The stream was dropped: close once `in_flight` reaches zero.
    released: bool,
}

/// One core's ring, shared (Rc) by the driver task, the accept loop and the streams.
pub struct Ring {
    uring: RefCell<IoUring>,
    taskrun: TaskRun,
    buffers: BufferRing,
    /// Sockets by index; `None` is free.
    sockets: RefCell<Vec<Option<Rc<RefCell<Socket>>>>>,
    free: RefCell<Vec<usize>>,
    /// Sockets whose receive ended with ENOBUFS, re-armed as buffers come back.
    starved: RefCell<VecDeque<usize>>,
    /// Accepted sockets (or accept errors) waiting for the accept loop.
    accepted: RefCell<VecDeque<Result<OwnedFd, io::Error>>>,
    acceptor: Cell<Option<Waker>>,
    /// The listener with a multishot accept in the kernel (and whether it is armed).
    listener: Cell<Option<RawFd>>,
    accept_armed: Cell<bool>,
    /// The driver waits for a kick: completions to hand out (from a park or a poll), buffers
    /// back for starved receives, or the end.
    kicked: Cell<bool>,
    driver: Cell<Option<Waker>>,
    stopping: Cell<bool>,
    /// Kernel entries after which the submission queue was empty: a request queued while
    /// this was `n` has been issued once it is past `n`.
    submitted: Cell<u64>,
    /// Quiet sends (socket index, `submitted` when queued) not yet known to be done.
    quiet_sends: RefCell<Vec<(usize, u64)>>,
    /// glommio's ring fds with a one-shot poll in this ring (slots of `OP_PARK_POLL`).
    park_polls: [Cell<Option<RawFd>>; 2],
    /// Reused by each pass to hold the completions it handles.
    completions: Cell<Vec<(u64, i32, u32)>>,
    /// Diagnostics, logged when the driver ends: kernel entries, parks, receives that ran out
    /// of buffers (ENOBUFS) and receives cancelled for holding too many.
    enters: Cell<u64>,
    parks: Cell<u64>,
    polls: Cell<u64>,
    late_sends: Cell<u64>,
    starvations: Cell<u64>,
    held_cancels: Cell<u64>,
}

impl Ring {
    /// Sets up the ring with `taskrun`, falling back from DEFER to COOP when the kernel
    /// refuses it; checks the opcodes and features tally uses; registers the buffers.
    pub fn new(taskrun: TaskRun) -> Result<Rc<Ring>, RingError> {
        Self::with_buffers(taskrun, RECV_BUFFERS)
    }

    /// [`Ring::new`] with `buffers` receive buffers (a power of two).
    fn with_buffers(taskrun: TaskRun, buffers: u16) -> Result<Rc<Ring>, RingError> {
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
        // SAFETY: the entries are page aligned, `count` (a power of two) long, and live as
        // long as the ring (dropped after it, see `finish`).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(
                    buffers.entries as u64,
                    buffers.count,
                    BUFFER_GROUP,
                    0,
                )
                .map_err(RingError::Buffers)?;
        }
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

    pub fn taskrun(&self) -> TaskRun {
        self.taskrun
    }

    /// Queues an SQE, submitted by the core's next park or busy poll ([`ParkHook`]).
    fn push(&self, entry: squeue::Entry) {
        let mut uring = self.uring.borrow_mut();
        // SAFETY: every entry tally queues points only at memory that outlives the request:
        // a socket's send buffer (kept in the table until its completion), the buffer ring.
        while unsafe { uring.submission().push(&entry) }.is_err() {
            // A full submission queue: hand it to the kernel now.
            let submitted = uring.submit();
            self.entered(&mut uring);
            if let Err(err) = submitted {
                log::error!("io_uring submit failed: {err}");
                break;
            }
        }
    }

    /// Counts a kernel entry, and a submission once the kernel has taken every queued SQE.
    fn entered(&self, uring: &mut IoUring) {
        self.enters.set(self.enters.get() + 1);
        let mut sq = uring.submission();
        sq.sync();
        if sq.is_empty() {
            self.submitted.set(self.submitted.get() + 1);
        }
    }

    /// Queues a send of what `socket` has left to send.
    ///
    /// A quiet send (a response's first attempt) is `MSG_DONTWAIT | MSG_WAITALL` with
    /// `IOSQE_CQE_SKIP_SUCCESS`: the kernel issues it while it takes the SQE, and DONTWAIT
    /// makes a socket without room fail it at once (EAGAIN, or the bytes it took) instead of
    /// waiting in the kernel, so once the kernel entry that took it has returned the send is
    /// over, and only a failure or a short send posts a completion. A response then costs
    /// no completion and no wake-up of its own: the core's one kernel entry per request both
    /// sends it and waits for the next. The rest after a short send goes as a plain send,
    /// which waits for room in the kernel and posts its completion.
    fn send(&self, socket: &mut Socket, quiet: bool) {
        let rest = &socket.send_buf[socket.sent..];
        let mut flags = libc::MSG_NOSIGNAL;
        if quiet {
            flags |= libc::MSG_DONTWAIT | libc::MSG_WAITALL;
        }
        let mut entry = opcode::Send::new(types::Fd(socket.fd), rest.as_ptr(), rest.len() as u32)
            .flags(flags)
            .build()
            .user_data(user_data(OP_SEND, socket.index));
        if quiet {
            entry = entry.flags(squeue::Flags::SKIP_SUCCESS);
            let epoch = self.submitted.get();
            socket.quiet_epoch = Some(epoch);
            self.quiet_sends.borrow_mut().push((socket.index, epoch));
        } else {
            socket.quiet_epoch = None;
        }
        socket.sending = true;
        socket.in_flight += 1;
        self.push(entry);
    }

    /// Ends the quiet sends that were issued and posted no failure: they sent everything.
    /// Returns how many it took off the list (which is in `submitted` order).
    fn settle_quiet_sends(&self) -> usize {
        let submitted = self.submitted.get();
        let mut quiet_sends = self.quiet_sends.borrow_mut();
        let issued = quiet_sends.partition_point(|&(_, epoch)| epoch < submitted);
        for (index, epoch) in quiet_sends.drain(..issued) {
            if let Some(socket) = self.socket(index) {
                let mut socket = socket.borrow_mut();
                if socket.sending && socket.quiet_epoch == Some(epoch) {
                    socket.sent = socket.send_buf.len();
                    self.send_ended(&mut socket);
                }
            }
        }
        issued
    }

    fn send_ended(&self, socket: &mut Socket) {
        socket.in_flight -= 1;
        socket.sending = false;
        socket.quiet_epoch = None;
        if let Some(waker) = socket.writer.take() {
            waker.wake();
        }
        self.maybe_close(socket);
    }

    fn kick(&self) {
        if !self.kicked.replace(true) {
            if let Some(waker) = self.driver.take() {
                waker.wake();
            }
        }
    }

    /// Starts a multishot accept on `listener` (kept open by the caller until `stop_accepting`
    /// has been awaited).
    pub fn start_accepting(&self, listener: RawFd) {
        self.listener.set(Some(listener));
        self.arm_accept();
    }

    fn arm_accept(&self) {
        if let Some(fd) = self.listener.get() {
            if !self.stopping.get() && !self.accept_armed.replace(true) {
                let entry = opcode::AcceptMulti::new(types::Fd(fd))
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(user_data(OP_ACCEPT, 0));
                self.push(entry);
            }
        }
    }

    /// The next accepted socket, or the error an accept failed with.
    pub async fn accept(&self) -> io::Result<OwnedFd> {
        std::future::poll_fn(|cx| match self.accepted.borrow_mut().pop_front() {
            Some(result) => Poll::Ready(result),
            None => {
                self.acceptor.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Re-arms the accept after a failure that ended it (called after a back-off).
    pub fn resume_accepting(&self) {
        self.arm_accept();
    }

    /// Cancels the accept; connections that arrive later stay in the backlog and are reset
    /// when the listener closes.
    pub fn stop_accepting(&self) {
        if self.accept_armed.get() {
            let entry = opcode::AsyncCancel::new(user_data(OP_ACCEPT, 0))
                .build()
                .user_data(user_data(OP_IGNORED, 0));
            self.push(entry);
        }
        self.listener.set(None);
    }

    /// Takes an accepted socket into the table and starts receiving on it.
    pub fn stream(self: &Rc<Self>, fd: OwnedFd) -> RingStream {
        let fd = {
            use std::os::fd::IntoRawFd;
            fd.into_raw_fd()
        };
        let index = self.free.borrow_mut().pop().unwrap_or_else(|| {
            let mut sockets = self.sockets.borrow_mut();
            sockets.push(None);
            sockets.len() - 1
        });
        let socket = Rc::new(RefCell::new(Socket {
            fd,
            index,
            held: VecDeque::new(),
            recv: Recv::Idle,
            capped: false,
            eof: false,
            error: None,
            reader: None,
            send_buf: Vec::new(),
            sent: 0,
            sending: false,
            quiet_epoch: None,
            send_error: None,
            writer: None,
            in_flight: 0,
            released: false,
        }));
        self.sockets.borrow_mut()[index] = Some(socket.clone());
        self.arm_recv(&mut socket.borrow_mut());
        RingStream {
            ring: self.clone(),
            socket,
        }
    }

    fn arm_recv(&self, socket: &mut Socket) {
        if socket.recv != Recv::Idle || socket.eof || socket.released {
            return;
        }
        socket.recv = Recv::Armed;
        socket.in_flight += 1;
        let entry = if socket.capped {
            opcode::Recv::new(types::Fd(socket.fd), std::ptr::null_mut(), 0)
                .buf_group(BUFFER_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(types::Fd(socket.fd), BUFFER_GROUP).build()
        }
        .user_data(user_data(OP_RECV, socket.index));
        self.push(entry);
    }

    /// The driver: hands completions to the streams. Installs the ring as this core's park
    /// hook for as long as it runs, so glommio sleeps on this ring. Ends after
    /// [`Ring::finish`] once nothing is in flight.
    pub async fn drive(self: Rc<Self>) {
        let _hook = ParkHookGuard::install(self.clone());
        loop {
            let reaped = self.reap();
            if self.stopping.get() && self.sockets.borrow().iter().all(Option::is_none) {
                // The last closes are queued, not yet submitted: no park will do it now.
                self.submit_queued();
                break;
            }
            if reaped > 0 {
                // Let the woken connections run (and queue their sends) before the next pass.
                futures_lite::future::yield_now().await;
                continue;
            }
            // Nothing completed: wait for the next park or poll that finds completions.
            std::future::poll_fn(|cx| {
                if self.kicked.replace(false) {
                    return Poll::Ready(());
                }
                self.driver.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
        }
        log::debug!(
            "ring driver done: {} io_uring_enter calls ({} parks, {} busy polls), {} receives \
             out of buffers, {} cancelled for holding {MAX_HELD_BUFFERS} buffers, {} late \
             send completions",
            self.enters.get(),
            self.parks.get(),
            self.polls.get(),
            self.starvations.get(),
            self.held_cancels.get(),
            self.late_sends.get()
        );
    }

    /// One pass: every posted completion handled. Enters the kernel only when completions
    /// overflowed the queue (they are flushed by an enter); parks and polls do the rest.
    fn reap(&self) -> usize {
        self.kicked.set(false);
        if self.uring.borrow_mut().submission().cq_overflow() {
            self.submit();
        }
        let mut reaped = 0;
        // Completions are copied out before they are handled: handling one may queue SQEs,
        // which needs the ring. The copy's buffer is reused from pass to pass.
        let mut batch = self.completions.take();
        loop {
            batch.clear();
            {
                let mut uring = self.uring.borrow_mut();
                let mut cq = uring.completion();
                cq.sync();
                batch.extend(cq.take(256).map(|c| (c.user_data(), c.result(), c.flags())));
            }
            if batch.is_empty() {
                break;
            }
            reaped += batch.len();
            for &(data, result, flags) in &batch {
                self.complete(data, result, flags);
            }
        }
        self.completions.set(batch);
        reaped += self.settle_quiet_sends();
        self.buffers.publish();
        self.rearm_starved();
        reaped
    }

    /// Submits what is queued, without waiting (`submit` adds GETEVENTS when the TASKRUN
    /// flag says task work is pending: that runs deferred completions and flushes overflow).
    fn submit(&self) {
        let mut uring = self.uring.borrow_mut();
        let submitted = uring.submit();
        self.entered(&mut uring);
        if let Err(err) = submitted {
            if !matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) {
                log::error!("io_uring submit failed: {err}");
            }
        }
    }

    /// Submits what is queued, if anything.
    fn submit_queued(&self) {
        if !self.uring.borrow_mut().submission().is_empty() {
            self.submit();
        }
    }

    /// Whether the driver has something to hand out: posted completions, an overflow, or
    /// quiet sends the last kernel entry issued.
    fn has_completions(&self) -> bool {
        if self
            .quiet_sends
            .borrow()
            .first()
            .is_some_and(|&(_, epoch)| epoch < self.submitted.get())
        {
            return true;
        }
        let mut uring = self.uring.borrow_mut();
        if uring.submission().cq_overflow() {
            return true;
        }
        let mut cq = uring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// Arms a one-shot poll for readability on each of glommio's ring fds that has none in
    /// flight. A ring's fd is readable while its completion queue holds anything.
    fn arm_park_polls(&self, fds: &[RawFd]) {
        for (index, (slot, &fd)) in self.park_polls.iter().zip(fds).enumerate() {
            if slot.get() != Some(fd) {
                slot.set(Some(fd));
                let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                    .build()
                    .user_data(user_data(OP_PARK_POLL, index));
                self.push(entry);
            }
        }
    }

    fn complete(&self, data: u64, result: i32, flags: u32) {
        let index = (data & INDEX_MASK) as usize;
        match data >> OP_SHIFT {
            OP_ACCEPT => self.accept_completed(result, flags),
            // glommio's ring had a completion (or the poll was cancelled): re-armed by the
            // next park. glommio reaps its own ring itself.
            OP_PARK_POLL => {
                if let Some(slot) = self.park_polls.get(index) {
                    slot.set(None);
                }
            }
            OP_RECV => {
                if let Some(socket) = self.socket(index) {
                    self.recv_completed(&mut socket.borrow_mut(), result, flags);
                }
            }
            OP_SEND => {
                if let Some(socket) = self.socket(index) {
                    let mut socket = socket.borrow_mut();
                    if !socket.sending {
                        // Cannot happen: a quiet send ends with the entry that issued it.
                        self.late_sends.set(self.late_sends.get() + 1);
                        return;
                    }
                    let quiet = socket.quiet_epoch.is_some();
                    if result > 0 {
                        socket.sent += result as usize;
                    } else if result < 0 && !(quiet && result == -libc::EAGAIN) {
                        // A quiet send that found no room is sent again, waiting for room.
                        socket.send_error = Some(-result);
                    }
                    self.send_ended(&mut socket);
                }
            }
            _ => {}
        }
    }

    fn socket(&self, index: usize) -> Option<Rc<RefCell<Socket>>> {
        self.sockets.borrow().get(index).and_then(Clone::clone)
    }

    fn accept_completed(&self, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed.set(false);
        }
        let item = if result >= 0 {
            // SAFETY: the kernel just created this descriptor for us.
            Ok(unsafe { OwnedFd::from_raw_fd(result) })
        } else if result == -libc::ECANCELED {
            return;
        } else {
            Err(io::Error::from_raw_os_error(-result))
        };
        let failed = item.is_err();
        self.accepted.borrow_mut().push_back(item);
        if let Some(waker) = self.acceptor.take() {
            waker.wake();
        }
        // A multishot accept that ended without an error (the kernel may end one at any
        // time) is re-armed at once; after an error the accept loop backs off first.
        if !failed && !cqueue::more(flags) {
            self.arm_accept();
        }
    }

    fn recv_completed(&self, socket: &mut Socket, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more {
            socket.in_flight -= 1;
        }
        if result > 0 {
            if let Some(bid) = cqueue::buffer_select(flags) {
                socket.held.push_back(Held {
                    bid,
                    len: result as usize,
                    read: 0,
                });
            }
        } else if result == 0 {
            socket.eof = true;
        } else if result == -libc::ENOBUFS {
            if !more {
                self.starvations.set(self.starvations.get() + 1);
                socket.recv = Recv::Starved;
                self.starved.borrow_mut().push_back(socket.index);
            }
        } else if result != -libc::ECANCELED {
            socket.error = Some(-result);
            socket.eof = true;
        }
        if !more && !matches!(socket.recv, Recv::Starved) {
            socket.recv = Recv::Idle;
        }
        if more
            && socket.recv == Recv::Armed
            && socket.held.len() >= MAX_HELD_BUFFERS
            && !socket.released
        {
            socket.recv = Recv::Cancelling;
            socket.capped = true;
            self.held_cancels.set(self.held_cancels.get() + 1);
            self.cancel(user_data(OP_RECV, socket.index));
            // At once, not at the next park: the kernel keeps filling buffers meanwhile. Rare
            // (a client that sends far ahead of what is read), so worth its kernel entry.
            self.submit();
        }
        if let Some(waker) = socket.reader.take() {
            waker.wake();
        }
        if socket.released {
            self.give_back_held(socket);
        }
        self.maybe_close(socket);
    }

    fn cancel(&self, target: u64) {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(OP_IGNORED, 0));
        self.push(entry);
    }

    /// Re-arms receives that ran out of buffers, now that some came back.
    fn rearm_starved(&self) {
        loop {
            let Some(index) = self.starved.borrow_mut().pop_front() else {
                return;
            };
            if let Some(socket) = self.socket(index) {
                let mut socket = socket.borrow_mut();
                if socket.recv == Recv::Starved {
                    socket.recv = Recv::Idle;
                    if socket.held.is_empty() {
                        self.arm_recv(&mut socket);
                    } else if let Some(waker) = socket.reader.take() {
                        // Its reader re-arms once it has taken what it holds.
                        waker.wake();
                    }
                }
            }
        }
    }

    fn give_back_held(&self, socket: &mut Socket) {
        for held in socket.held.drain(..) {
            self.buffers.push(held.bid);
        }
        self.buffers.publish();
    }

    /// Closes a released socket once the kernel is done with it, and frees its table slot.
    fn maybe_close(&self, socket: &mut Socket) {
        if socket.released && socket.in_flight == 0 && socket.fd >= 0 {
            let entry = opcode::Close::new(types::Fd(socket.fd))
                .build()
                .user_data(user_data(OP_IGNORED, 0));
            socket.fd = -1;
            self.sockets.borrow_mut()[socket.index] = None;
            self.free.borrow_mut().push(socket.index);
            self.push(entry);
        }
    }

    /// Sockets in the table (open, or closing with requests in flight).
    #[cfg(test)]
    fn open_sockets(&self) -> usize {
        self.sockets.borrow().iter().flatten().count()
    }

    /// Cancels everything still in flight and lets the driver end once the kernel has
    /// answered (bounded by the caller). The buffers are freed with the ring after that.
    pub fn finish(&self) {
        self.stopping.set(true);
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(OP_IGNORED, 0));
        self.push(entry);
        self.kick();
    }
}

/// The core sleeps here: see the module's documentation.
impl ParkHook for Ring {
    fn park(&self, fds: &[RawFd], timeout: Option<Duration>) -> io::Result<()> {
        self.arm_park_polls(fds);
        self.parks.set(self.parks.get() + 1);
        if self.has_completions() {
            // Work for the driver already: hand the queue to the kernel, without waiting.
            self.submit_queued();
            self.kick();
            return Ok(());
        }
        let timespec = timeout.map(types::Timespec::from);
        let mut args = types::SubmitArgs::new();
        if let Some(timespec) = &timespec {
            args = args.timespec(timespec);
        }
        let waited = {
            let mut uring = self.uring.borrow_mut();
            let waited = uring.submitter().submit_with_args(1, &args);
            self.entered(&mut uring);
            waited
        };
        match waited {
            Ok(_) => {}
            // The timeout passed, a signal arrived, or the completion queue is full: all are
            // ends of the sleep.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(err) => return Err(err),
        }
        if self.has_completions() {
            self.kick();
        }
        Ok(())
    }

    fn poll(&self, runnable: bool) {
        if runnable {
            let pending = {
                let mut uring = self.uring.borrow_mut();
                let sq = uring.submission();
                !sq.is_empty() || sq.taskrun()
            };
            if pending {
                self.polls.set(self.polls.get() + 1);
                self.submit();
            }
        }
        if self.has_completions() {
            self.kick();
        }
    }
}

/// Keeps the ring installed as the park hook of this thread's executor while the driver runs.
struct ParkHookGuard;

impl ParkHookGuard {
    fn install(ring: Rc<Ring>) -> ParkHookGuard {
        glommio::set_park_hook(Some(ring));
        ParkHookGuard
    }
}

impl Drop for ParkHookGuard {
    fn drop(&mut self) {
        glommio::set_park_hook(None);
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

/// A connection on tally's ring: what [`super::conn`] reads from and writes to.
pub struct RingStream {
    ring: Rc<Ring>,
    socket: Rc<RefCell<Socket>>,
}

impl RingStream {
    /// Copies what the connection holds into `buf`, giving emptied buffers back.
    fn take_held(&self, socket: &mut Socket, buf: &mut [u8]) -> usize {
        let mut copied = 0;
        while copied < buf.len() {
            let Some(held) = socket.held.front_mut() else {
                break;
            };
            let data = &self.ring.buffers.buffer(held.bid)[held.read..held.len];
            let n = data.len().min(buf.len() - copied);
            buf[copied..copied + n].copy_from_slice(&data[..n]);
            copied += n;
            held.read += n;
            if held.read == held.len {
                let bid = held.bid;
                socket.held.pop_front();
                self.ring.buffers.push(bid);
            }
        }
        if copied > 0 {
            self.ring.buffers.publish();
            if !self.ring.starved.borrow().is_empty() {
                self.ring.kick();
            }
        }
        copied
    }
}

impl super::stream::Stream for RingStream {
    const WAITS_WITHOUT_BUFFER: bool = true;

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            if let Some(read) = self.read_now(buf) {
                return Poll::Ready(read);
            }
            let mut socket = self.socket.borrow_mut();
            if socket.recv == Recv::Idle {
                self.ring.arm_recv(&mut socket);
            }
            socket.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn read_now(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let mut socket = self.socket.borrow_mut();
        let n = self.take_held(&mut socket, buf);
        if n > 0 || buf.is_empty() {
            return Some(Ok(n));
        }
        if let Some(errno) = socket.error {
            return Some(Err(io::Error::from_raw_os_error(errno)));
        }
        socket.eof.then_some(Ok(0))
    }

    async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut socket = self.socket.borrow_mut();
            if !socket.held.is_empty() || socket.eof {
                return Poll::Ready(Ok(()));
            }
            if socket.recv == Recv::Idle {
                self.ring.arm_recv(&mut socket);
            }
            socket.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        // A send left in flight by a dropped write still owns the buffer: wait for it.
        self.wait_send().await;
        {
            let mut socket = self.socket.borrow_mut();
            socket.send_buf.clear();
            socket.send_buf.extend_from_slice(data);
            socket.sent = 0;
            socket.send_error = None;
        }
        let mut quiet = true;
        loop {
            {
                let mut socket = self.socket.borrow_mut();
                if let Some(errno) = socket.send_error.take() {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                if socket.sent >= socket.send_buf.len() {
                    return Ok(());
                }
                self.ring.send(&mut socket, quiet);
            }
            quiet = false;
            self.wait_send().await;
        }
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        let fd = self.socket.borrow().fd;
        // SAFETY: the socket is open while this stream exists.
        if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.socket.borrow().fd
    }

    /// Gives the socket's send buffer back while the connection idles.
    fn trim(&mut self) {
        let mut socket = self.socket.borrow_mut();
        if !socket.sending && socket.send_buf.capacity() > 0 {
            socket.send_buf = Vec::new();
        }
        if socket.held.is_empty() && socket.held.capacity() > 0 {
            socket.held = VecDeque::new();
        }
    }
}

impl RingStream {
    async fn wait_send(&self) {
        std::future::poll_fn(|cx| {
            let mut socket = self.socket.borrow_mut();
            if socket.sending {
                socket.writer = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

impl Drop for RingStream {
    fn drop(&mut self) {
        let mut socket = self.socket.borrow_mut();
        socket.released = true;
        socket.reader = None;
        socket.writer = None;
        self.ring.give_back_held(&mut socket);
        if socket.in_flight > 0 {
            let fd = socket.fd;
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                .build()
                .user_data(user_data(OP_IGNORED, 0));
            self.ring.push(entry);
        }
        self.ring.maybe_close(&mut socket);
    }
}

/// How long `finish` waits for the kernel to answer the cancellations before the core gives
/// up on it (the buffers are then leaked rather than freed under the kernel).
pub const FINISH_WAIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests;
