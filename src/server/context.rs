//! What the connections of one core share besides the application: limits, timeouts, the
//! cached Date header, the registry of open connections and whether the core is draining.
//! Built on its core and used only there.

use std::cell::{Cell, RefCell};

use crate::api::App;
use crate::http::{HttpDate, Limits};

use super::registry::Registry;

pub struct ConnContext {
    pub app: std::rc::Rc<App>,
    pub limits: Limits,
    /// Request timeout in whole seconds of the registry's coarse clock.
    pub request_timeout_secs: u64,
    /// Idle keep-alive timeout, likewise.
    pub idle_timeout_secs: u64,
    pub max_connections: usize,
    /// Refreshed once a second by the sweeper.
    pub date: RefCell<HttpDate>,
    pub registry: Registry,
    /// Set when the core starts draining: responses say `Connection: close` from then on.
    pub shutting_down: Cell<bool>,
    /// Read buffers not in use, for the next connection that has bytes to read (see
    /// `conn::take_read_buffer`): connections that can wait without one hand theirs back
    /// between requests, so the core's read buffers are a small working set.
    pub read_buffers: RefCell<Vec<Vec<u8>>>,
    /// Connections refused over the cap that are lingering before their close.
    pub lingering_refusals: Cell<usize>,
}

impl ConnContext {
    /// Once a second: advance the coarse clock, refresh the Date header, and interrupt the
    /// connections past their deadline.
    pub async fn run_sweeper(self: std::rc::Rc<Self>) {
        /// Connections (of ~8 KiB each) whose buffers must have been freed before the heap's
        /// free pages are worth handing back to the kernel.
        const TRIM_HEAP_AFTER: usize = 256;
        loop {
            glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
            self.date.borrow_mut().refresh(std::time::SystemTime::now());
            // The connections asked by the previous sweep have freed their buffers since; the
            // allocator keeps freed pages inside the heap, so give them back to the kernel
            // (RSS), as a busy period's thousands of connections going idle leaves megabytes.
            if self.registry.trims_asked() >= TRIM_HEAP_AFTER {
                // SAFETY: malloc_trim only releases free memory; it is thread-safe.
                unsafe { libc::malloc_trim(0) };
            }
            self.registry.sweep();
        }
    }
}
