//! What the connections of one core share besides the application: limits, timeouts, the
//! cached Date header, the registry of open connections and whether the core is draining.
//! Built on its core and used only there.

use std::cell::{Cell, RefCell};

use crate::app::App;
use crate::http::{HttpDate, Limits};

use super::registry::Registry;

pub struct ConnContext {
    pub app: App,
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
}

impl ConnContext {
    /// Once a second: advance the coarse clock, refresh the Date header, and interrupt the
    /// connections past their deadline.
    pub async fn run_sweeper(self: std::rc::Rc<Self>) {
        loop {
            glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
            self.date.borrow_mut().refresh(std::time::SystemTime::now());
            self.registry.sweep();
        }
    }
}
