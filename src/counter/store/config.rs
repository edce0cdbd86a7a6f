//! How a store is configured: [`StoreConfig`], its defaults, and the bound on closing a
//! connection. Plain data; [`spawn`](super::spawn) takes it.

use std::sync::Arc;
use std::time::Duration;

use super::limit::NamedLimit;

pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_millis(200);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a closing connection may take to say goodbye (Terminate) to the server.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// A tokio-postgres connection string: `postgresql://...` or `host=... user=...`.
    pub url: String,
    /// Longest wait for an `add`, counted from when it was sent to the store.
    pub commit_timeout: Duration,
    /// How often the count is read back while idle, so instances sharing a row converge.
    pub refresh_interval: Duration,
    /// Bound on connecting plus schema set-up.
    pub connect_timeout: Duration,
    /// The CPU the `tally-store` thread is pinned to; `None` leaves it to the scheduler.
    pub cpu: Option<usize>,
    /// How long an idempotency key is remembered (and replayed) after its first request.
    pub idempotency_retention: Duration,
    /// For a store that commits named counters: its settings. `None` for the single counter's.
    pub named: Option<NamedConfig>,
}

/// A named counters' store's settings.
#[derive(Debug, Clone)]
pub struct NamedConfig {
    /// The limit on how many counters the database holds, shared by the instance's stores.
    pub limit: Arc<NamedLimit>,
    /// Most names whose count the store keeps in memory for GET (see `view`).
    pub view_capacity: usize,
}

/// Default of [`NamedConfig::view_capacity`]: at most ~9 MB per store with 200-byte names.
pub const DEFAULT_NAMED_VIEW_CAPACITY: usize = 32_768;

impl StoreConfig {
    /// The given URL with the default timeouts, unpinned.
    pub fn new(url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            cpu: None,
            idempotency_retention: DEFAULT_IDEMPOTENCY_RETENTION,
            named: None,
        }
    }
}
