//! Per-core table of open connections and their deadlines, swept once a second.
//!
//! Timeouts cost nothing per request: a connection only stores a deadline in whole seconds of
//! the core's coarse clock; the sweeper finds expired ones, marks them `timed_out` and wakes
//! the task waiting in [`Slot::expired`] (raced with the connection's read). The connection then
//! answers 408 if it was in the middle of a request.
//!
//! The socket itself is left alone: a `shutdown(SHUT_RD)` would make Linux answer any byte the
//! client sends afterwards with a reset, which defeats the lingering close that lets the client
//! read its 408.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

/// What a connection is doing, which decides the timeout that applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the first byte of a request (idle keep-alive timeout).
    Idle,
    /// Part of a request has arrived (request timeout, counted from its first byte).
    Reading,
    /// Requests are being answered; no timeout (the counter has its own).
    Busy,
    /// A batch of responses is being written: one deadline for the whole batch, because
    /// glommio's write timeout restarts with every partial send and a client draining a few
    /// bytes at a time would never meet it.
    Writing,
}

/// One connection's entry, shared by the connection task and the sweeper.
pub struct Slot {
    phase: Cell<Phase>,
    /// Coarse-clock second after which the connection is closed; meaningless when Busy.
    deadline: Cell<u64>,
    timed_out: Cell<bool>,
    /// The connection was past a deadline at least once (`timed_out` is cleared by `rearm`).
    ever_timed_out: Cell<bool>,
    /// The sweeper asked this idle connection to give its buffers back (see `Registry::sweep`),
    /// or it holds none.
    trim: Cell<bool>,
    /// The connection task waiting in [`Slot::expired`], woken when the deadline passes.
    waker: Cell<Option<Waker>>,
    index: Cell<usize>,
}

impl Slot {
    pub fn set_phase(&self, phase: Phase, deadline: u64) {
        self.phase.set(phase);
        self.deadline.set(deadline);
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.get()
    }

    /// Whether the connection was ever past a deadline (for the timed-out metric).
    pub fn ever_timed_out(&self) -> bool {
        self.ever_timed_out.get()
    }

    /// Resolves once the sweeper has found this connection past its deadline (or the core
    /// closes it at shutdown). Raced with a read: costs a waker clone when the read waits.
    pub async fn expired(&self) {
        std::future::poll_fn(|cx| {
            if self.timed_out.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves when the connection is past its deadline or, while it idles, asked to give
    /// its buffers back.
    pub async fn interrupted(&self) -> Interrupt {
        std::future::poll_fn(|cx| {
            if self.timed_out.get() {
                Poll::Ready(Interrupt::Expired)
            } else if self.trim.get() {
                Poll::Ready(Interrupt::Trim)
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Clears the expiry after it was acted on, so a deadline set next (the write of a 408)
    /// counts from now instead of having passed already.
    pub fn rearm(&self) {
        self.timed_out.set(false);
    }

    /// The connection holds buffers again: it may be asked to give them back the next time
    /// it idles.
    pub fn holds_buffers(&self) {
        self.trim.set(false);
    }

    /// The connection holds no buffers: the sweeper need not ask it.
    pub fn holds_no_buffers(&self) {
        self.trim.set(true);
    }

    /// Marks the connection timed out and wakes its task.
    fn interrupt(&self) {
        self.timed_out.set(true);
        self.ever_timed_out.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Why [`Slot::interrupted`] resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    Expired,
    Trim,
}

pub struct Registry {
    slots: RefCell<Vec<Rc<Slot>>>,
    started: Instant,
    /// Seconds since `started`, advanced by the sweeper.
    now: Cell<u64>,
    /// The task waiting in [`Registry::until_empty`], woken when the last slot leaves.
    drain_waiter: Cell<Option<Waker>>,
    /// Idle connections the last sweep asked to give their buffers back.
    trims_asked: Cell<usize>,
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            slots: RefCell::new(Vec::new()),
            started: Instant::now(),
            now: Cell::new(0),
            drain_waiter: Cell::new(None),
            trims_asked: Cell::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The coarse clock, in seconds; deadlines are `now() + timeout + 1` so that none fires
    /// early however late in its second the clock was read.
    pub fn now(&self) -> u64 {
        self.now.get()
    }

    /// The deadline `secs` from now on the coarse clock (see [`Registry::now`]).
    pub fn deadline_in(&self, secs: u64) -> u64 {
        self.now() + secs + 1
    }

    pub fn insert(&self, idle_deadline: u64) -> Rc<Slot> {
        let mut slots = self.slots.borrow_mut();
        let slot = Rc::new(Slot {
            phase: Cell::new(Phase::Idle),
            deadline: Cell::new(idle_deadline),
            timed_out: Cell::new(false),
            ever_timed_out: Cell::new(false),
            trim: Cell::new(false),
            waker: Cell::new(None),
            index: Cell::new(slots.len()),
        });
        slots.push(slot.clone());
        slot
    }

    pub fn remove(&self, slot: &Slot) {
        let mut slots = self.slots.borrow_mut();
        let i = slot.index.get();
        slots.swap_remove(i);
        if let Some(moved) = slots.get(i) {
            moved.index.set(i);
        }
        if slots.is_empty() {
            if let Some(waker) = self.drain_waiter.take() {
                waker.wake();
            }
        }
    }

    /// Resolves once no connection is open (at shutdown, after new ones stopped arriving).
    pub async fn until_empty(&self) {
        std::future::poll_fn(|cx| {
            if self.is_empty() {
                Poll::Ready(())
            } else {
                self.drain_waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Advances the clock and interrupts every connection past its deadline; asks the idle
    /// ones to give their buffers back (so 10,000 idle keep-alive connections cost little
    /// memory, while a busy connection keeps its buffers from one request to the next).
    /// Returns how many were interrupted.
    pub fn sweep(&self) -> usize {
        let now = self.started.elapsed().as_secs();
        self.now.set(now);
        let slots = self.slots.borrow();
        let mut expired = 0;
        let mut trims = 0;
        for slot in slots.iter() {
            if slot.phase.get() != Phase::Busy
                && !slot.timed_out.get()
                && slot.deadline.get() <= now
            {
                slot.interrupt();
                expired += 1;
            } else if slot.phase.get() == Phase::Idle && !slot.trim.replace(true) {
                trims += 1;
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
        self.trims_asked.set(trims);
        expired
    }

    /// How many idle connections the last sweep asked to give their buffers back.
    pub fn trims_asked(&self) -> usize {
        self.trims_asked.get()
    }

    /// Interrupts idle connections (at shutdown: they have nothing in flight).
    pub fn close_idle(&self) {
        for slot in self.slots.borrow().iter() {
            if slot.phase.get() == Phase::Idle && !slot.timed_out.get() {
                slot.interrupt();
            }
        }
    }

    /// Interrupts every connection that is waiting to read (the grace period is over).
    pub fn close_all_reading(&self) {
        for slot in self.slots.borrow().iter() {
            if slot.phase.get() != Phase::Busy && !slot.timed_out.get() {
                slot.interrupt();
            }
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}
