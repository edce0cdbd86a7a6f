// tally's patch (TALLY-PATCH.md): lets an application that owns an io_uring ring of its own
// make the executor sleep on that ring, so a thread waits in one place with one kernel entry.

//! Park hook: the executor sleeps on the application's ring instead of its own.
//!
//! Without a hook, an executor that has nothing to run sleeps in `io_uring_enter` on its main
//! ring, and an application with a ring of its own has to wake it through an eventfd. With a
//! hook installed ([`set_park_hook`]), the executor, once it has flushed its rings and
//! announced that it sleeps, calls [`ParkHook::park`] with the file descriptors of its rings;
//! the hook waits on its own ring until one of them is readable (a completion on any of the
//! executor's rings: I/O, timers, the eventfd other threads write to wake it) or one of its
//! own requests completes. The hooked park also stops re-arming the preemption timers on
//! every pass and replaces the process-wide `membarrier` with a fence.

use std::{io, os::unix::io::RawFd, rc::Rc, time::Duration};

/// What the executor calls instead of sleeping on its own ring. Installed per executor
/// thread with [`set_park_hook`]; called on that thread only.
pub trait ParkHook {
    /// Sleeps until one of `fds` (the executor's rings) is readable, the hook's own ring has
    /// something to hand to its tasks, or `timeout` has passed (`None`: no limit). Spurious
    /// returns are allowed. Must not block when it already has work for its tasks.
    fn park(&self, fds: &[RawFd], timeout: Option<Duration>) -> io::Result<()>;

    /// Called on every pass of the executor's loop that does not sleep, after the executor
    /// polled its own rings. `runnable` says whether tasks are ready to run: when it is
    /// false, the executor is about to park (so [`ParkHook::park`] comes next unless its own
    /// rings had events). A cheap check: it may enter the kernel only to submit.
    fn poll(&self, runnable: bool);
}

/// Installs (or, with `None`, removes) the park hook of the executor running on this thread.
///
/// # Panics
/// When called outside of an executor.
pub fn set_park_hook(hook: Option<Rc<dyn ParkHook>>) {
    crate::executor().reactor().sys.set_park_hook(hook);
}
