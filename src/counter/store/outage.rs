//! While there is no connection: increments arriving during a young outage are held for the
//! reconnection (in order), the others refused `Unavailable`, and each held or in-doubt batch
//! is answered at its deadline. Sends nothing to PostgreSQL.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::error::CommitError;
use super::messages::{Add, Request};
use super::state::Store;
use super::stats::Counters;

/// The longest pause between connection attempts while an increment waits for one (held in
/// an outage, or in doubt): a restarted PostgreSQL is found within this once it is back,
/// rather than up to [`BACKOFF_MAX`](super::session::BACKOFF_MAX) later, past the increment's
/// deadline.
const BACKOFF_WHILE_WAITING: Duration = Duration::from_millis(200);

/// For a store thread that could not start (no runtime): answers every `add` `Unavailable`
/// with `reason` until shutdown or until the last handle is gone.
pub(super) fn refuse_until_shutdown(
    queue: &flume::Receiver<Request>,
    reason: &str,
    stats: &Counters,
) {
    while let Ok(request) = queue.recv() {
        if !request.refuse(reason, stats) {
            return;
        }
    }
}

impl Request {
    /// Answers `Unavailable` with `reason`, counted in the store's metrics; false for
    /// `Shutdown`, which has nobody to answer.
    pub(super) fn refuse(self, reason: &str, stats: &Counters) -> bool {
        let error = || CommitError::Unavailable(reason.to_owned());
        match self {
            Request::Add(add) => {
                stats
                    .commit_errors_unavailable
                    .fetch_add(1, Ordering::Relaxed);
                add.job.send_error(error());
            }
            Request::ReadNamed { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error()));
                }
            }
            Request::DeleteNamed { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Request::Shutdown => return false,
        }
        true
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

impl Store<'_> {
    /// The pause before the next connection attempt: `backoff`, or at most
    /// [`BACKOFF_WHILE_WAITING`] while an increment waits for a connection.
    pub(super) fn pause(&self, backoff: Duration) -> Duration {
        let waiting = self.in_doubt_deadline().is_some()
            || !self.held.borrow().is_empty()
            || self.holding_until().is_some();
        if waiting {
            backoff.min(BACKOFF_WHILE_WAITING)
        } else {
            backoff
        }
    }

    /// While the outage is younger than the commit timeout: when it stops being.
    fn holding_until(&self) -> Option<Instant> {
        let until = self.outage_since.get()? + self.config.commit_timeout;
        (Instant::now() < until).then_some(until)
    }

    /// Runs `work` while holding each `add` that arrives during a young outage (see
    /// [`Store::held`]) and answering the others with `Unavailable`; answers an in-doubt batch
    /// with its unknown outcome, and a held `add` with `Unavailable`, once its deadline passes
    /// (or the outage outlasts the commit timeout); `None` on shutdown.
    pub(super) async fn refusing_requests_during<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            let in_doubt_deadline = self.in_doubt_deadline();
            let holding_until = self.holding_until();
            let held_deadline = self.held.borrow().iter().map(|add| add.deadline).min();
            // The next moment something is due: the in-doubt batch's or a held add's deadline,
            // or the end of the holding (which then refuses every held add).
            let next_due = [
                in_doubt_deadline,
                held_deadline.and(holding_until),
                held_deadline,
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                output = &mut work => return Some(output),
                _ = sleep_until_some(next_due) => {
                    if in_doubt_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        if let Some(batch) = self.in_doubt.take() {
                            self.answer_in_doubt(batch);
                        }
                    }
                    self.refuse_held_past_due();
                }
                request = self.queue.recv_async() => match request {
                    Ok(Request::Add(add)) if self.holding_until().is_some() => {
                        self.held.borrow_mut().push_back(add);
                    }
                    Ok(Request::Shutdown) | Err(_) => return None,
                    Ok(request) => {
                        request.refuse(&self.last_error, &self.shared.stats);
                    }
                },
            }
        }
    }

    /// Answers `Unavailable` to the held adds whose deadline passed, and to all of them once
    /// the outage is older than the commit timeout.
    fn refuse_held_past_due(&self) {
        let holding = self.holding_until().is_some();
        let now = Instant::now();
        let (due, kept): (VecDeque<Add>, VecDeque<Add>) = self
            .held
            .take()
            .into_iter()
            .partition(|add| !holding || now >= add.deadline);
        *self.held.borrow_mut() = kept;
        for add in due {
            self.refuse(add);
        }
    }

    /// Nothing was sent: known not applied.
    pub(super) fn refuse(&self, add: Add) {
        Request::Add(add).refuse(&self.last_error, &self.shared.stats);
    }
}
