//! The application as handlers see it: no sockets, no executors, no connection state.
//!
//! [`App`] is one core's value (its key/value replica, its side of the counter, its metrics),
//! built on that core and used only there; [`Instance`] is what every core's `App` points to
//! (the counter's store, every core's metrics, readiness). Endpoints take an `&App`, so a unit
//! test builds one directly and calls them without a listener or a binary.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::counter::{named, CounterCore, CounterShared};
use crate::kv::{ReloadStatus, ReloadTrigger, Replica};
use crate::metrics::{self, CoreMetrics};

use super::lookup::{lookup, Lookup, LookupScratch};

/// This instance: what every core's [`App`] shares (read-mostly; metrics are written each by
/// its own core).
pub struct Instance {
    /// One entry per core, indexed by core id.
    pub metrics: Vec<CoreMetrics>,
    pub counter: Arc<CounterShared>,
    pub named: Arc<named::Shared>,
    /// Cores whose key/value replica is built; ready once it equals `metrics.len()`.
    kv_ready_cores: AtomicUsize,
    /// For `tally_uptime_seconds`.
    started: Instant,
    /// The dataset's generation, load time and reload failures (written by the reload thread).
    pub kv_status: Arc<ReloadStatus>,
    /// Asks for a dataset reload; `None` where nothing can reload (unit tests).
    pub kv_reload: Option<ReloadTrigger>,
    /// `--admin-token`: without it the admin routes do not exist (404).
    pub admin_token: Option<AdminToken>,
}

impl Instance {
    /// `metrics` has one entry per core.
    pub fn new(
        metrics: Vec<CoreMetrics>,
        counter: Arc<CounterShared>,
        named: Arc<named::Shared>,
    ) -> Self {
        Instance {
            metrics,
            counter,
            named,
            kv_ready_cores: AtomicUsize::new(0),
            started: Instant::now(),
            kv_status: Arc::default(),
            kv_reload: None,
            admin_token: None,
        }
    }

    /// With the admin routes, open to requests that carry `token`.
    pub fn with_admin_token(mut self, token: Option<AdminToken>) -> Self {
        self.admin_token = token;
        self
    }

    /// With the dataset's status and the way to ask for a reload.
    pub fn with_kv_reload(mut self, status: Arc<ReloadStatus>, trigger: ReloadTrigger) -> Self {
        self.kv_status = status;
        self.kv_reload = Some(trigger);
        self
    }

    pub fn cores(&self) -> usize {
        self.metrics.len()
    }

    /// Whether every core has built its key/value replica.
    pub fn kv_ready(&self) -> bool {
        self.kv_ready_cores.load(Ordering::Acquire) == self.cores()
    }

    /// Why the instance is not ready to serve, if it is not (for `/api/v1/system/ready`).
    pub fn not_ready_reason(&self) -> Option<Cow<'static, str>> {
        if !self.kv_ready() {
            return Some(Cow::Borrowed(
                "the key/value replicas are still being built",
            ));
        }
        self.counter
            .unavailable_reason()
            .or_else(|| self.named.unavailable_reason().map(Cow::Borrowed))
    }

    /// `/metrics`: every core's HTTP metrics, the counter's, uptime and the process's.
    pub fn render_metrics(&self, out: &mut String) {
        metrics::render_cores(&self.metrics, out);
        self.kv_status.render(out);
        self.counter.render_metrics(out);
        self.named.render_metrics(out);
        metrics::write_single(
            out,
            "tally_uptime_seconds",
            "gauge",
            "Seconds since start-up.",
            self.started.elapsed().as_secs(),
        );
        metrics::process::render(out);
    }
}

/// One core's application state.
pub struct App {
    pub core: usize,
    pub instance: Arc<Instance>,
    /// Borrowed for one lookup at a time (never across an await), so a reload's
    /// [`swap_replica`](App::swap_replica), which runs between requests, always gets it.
    replica: RefCell<Replica>,
    /// simd-json's reusable buffers for `/get_value` bodies (no allocation per lookup).
    kv_scratch: RefCell<LookupScratch>,
    pub counter: Rc<CounterCore>,
    /// This core's side of named counters.
    pub named: Rc<named::Core>,
    /// This core's named counters' owner loop, awaited by [`App::finish`].
    named_owner: RefCell<Option<glommio::Task<()>>>,
    /// Core 0 only: the counter's owner loop, awaited by [`App::finish`].
    owner: RefCell<Option<glommio::Task<()>>>,
}

impl App {
    /// Builds core `core`'s state and counts its replica as ready.
    pub fn new(
        core: usize,
        instance: Arc<Instance>,
        replica: Replica,
        counter: Rc<CounterCore>,
        owner: Option<glommio::Task<()>>,
        named: (Rc<named::Core>, Option<glommio::Task<()>>),
    ) -> App {
        let metrics = &instance.metrics[core];
        metrics.kv_replica_bytes.set(replica.memory_bytes() as u64);
        metrics.kv_replica_pairs.set(replica.len() as u64);
        instance.kv_ready_cores.fetch_add(1, Ordering::AcqRel);
        App {
            core,
            instance,
            replica: RefCell::new(replica),
            kv_scratch: RefCell::new(LookupScratch::new()),
            counter,
            named: named.0,
            named_owner: RefCell::new(named.1),
            owner: RefCell::new(owner),
        }
    }

    /// The core stops serving: sends its last increments to the owner; increments after this
    /// fail at once.
    pub fn close(&self) {
        self.counter.close();
        self.named.close();
    }

    /// On the owner core, waits (at most `limit`) for the owner to commit what every core sent;
    /// it ends once every core has closed. Elsewhere returns at once.
    pub async fn finish(&self, limit: std::time::Duration) {
        let owners = [
            self.owner.borrow_mut().take(),
            self.named_owner.borrow_mut().take(),
        ];
        let drained = async {
            for owner in owners.into_iter().flatten() {
                owner.await;
            }
        };
        let timeout = async {
            glommio::timer::sleep(limit).await;
            log::error!("the counters' owners did not finish draining; exiting anyway");
        };
        futures_lite::future::or(drained, timeout).await;
    }

    /// This core's metrics.
    pub fn metrics(&self) -> &CoreMetrics {
        &self.instance.metrics[self.core]
    }

    /// Answers a `/get_value` body from this core's replica and gives the outcome to `answer`
    /// (the value borrows the replica, which stays borrowed only for that call).
    pub fn lookup<R>(&self, body: &mut [u8], answer: impl FnOnce(Lookup<'_>) -> R) -> R {
        let replica = self.replica.borrow();
        answer(lookup(&replica, &mut self.kv_scratch.borrow_mut(), body))
    }

    /// Puts `new` in place of this core's replica and returns the old one. Called between
    /// requests: no lookup holds the replica then (they borrow it synchronously).
    pub fn swap_replica(&self, new: Replica) -> Replica {
        let metrics = self.metrics();
        metrics.kv_replica_bytes.set(new.memory_bytes() as u64);
        metrics.kv_replica_pairs.set(new.len() as u64);
        std::mem::replace(&mut *self.replica.borrow_mut(), new)
    }
}

/// The secret an admin request must present as `Authorization: Bearer <token>`. Its `Debug`
/// does not print it (configurations are logged).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Box<[u8]>);

impl AdminToken {
    /// `None` for an empty token: an empty secret would open the door to anyone.
    pub fn new(token: &str) -> Option<AdminToken> {
        let token = token.trim();
        (!token.is_empty()).then(|| AdminToken(token.as_bytes().into()))
    }

    /// Whether an `Authorization` value is `Bearer <this token>` (the scheme is
    /// case-insensitive, RFC 9110 §11.1). The token is compared in constant time, so response
    /// times do not reveal how much of a guess was right; only its length can show.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, credentials)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ")
            && bool::from(credentials.trim_ascii().ct_eq(&self.0))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[cfg(test)]
mod admin_token_tests {
    use super::AdminToken;

    #[test]
    fn only_the_bearer_token_itself_is_accepted() {
        let token = AdminToken::new("s3cret").expect("not empty");
        assert!(token.accepts(Some(b"Bearer s3cret")));
        assert!(token.accepts(Some(b"bearer  s3cret ")));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"Bearer S3CRET",
            b"Basic s3cret",
            b"s3cret",
            b"Bearer ",
            b"",
        ] {
            assert!(
                !token.accepts(Some(wrong)),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!token.accepts(None));
        assert!(AdminToken::new("  ").is_none());
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }
}
