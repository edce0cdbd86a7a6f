//! The store's errors: [`CommitError`], what an increment's caller is told, and
//! [`StoreError`], why connecting or settling failed (logged, and told to callers while
//! disconnected). Also how a PostgreSQL error maps onto them. No I/O.

use tokio_postgres::error::Severity;

use super::RowLowered;

/// Why an increment was not confirmed. Every variant maps to a 503; only `Unavailable` and
/// `InvalidDelta` promise that nothing was applied.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// Not connected, or PostgreSQL rejected the statement: nothing was applied.
    #[error("PostgreSQL unavailable: {0}")]
    Unavailable(String),
    /// No answer within the commit timeout, and no way to settle it before the deadline: the
    /// increment may or may not have committed.
    #[error("no answer from PostgreSQL within the commit timeout (outcome unknown)")]
    Timeout,
    /// The connection broke while the statement was in flight, and PostgreSQL stayed
    /// unreachable until the deadline: it may have committed.
    #[error("connection to PostgreSQL lost during the commit (outcome unknown): {0}")]
    Unknown(String),
    /// A caller bug: deltas are sums of positive increments.
    #[error("increment must be positive, got {0}")]
    InvalidDelta(i64),
    /// The row is below a count this store already returned: answering would hand out values
    /// twice. Refused until the row is raised to at least `highest_returned`.
    #[error(
        "the counter row was lowered outside tally: it is at {row}, below {highest_returned}, \
         a count this instance already returned; raise it to at least {highest_returned}"
    )]
    RowLowered { row: i64, highest_returned: i64 },
}

impl From<RowLowered> for CommitError {
    fn from(lowered: RowLowered) -> Self {
        CommitError::RowLowered {
            row: lowered.row,
            highest_returned: lowered.highest_returned,
        }
    }
}

/// An `ERROR` (not `FATAL`/`PANIC`) reply to a single-statement transaction means PostgreSQL
/// rolled it back and the session goes on: known not applied. Anything else, a broken socket,
/// a server shutting down mid-statement (`FATAL 57P01`, which can arrive after the COMMIT), is
/// an unknown outcome.
pub(super) fn statement_was_rejected(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.parsed_severity() == Some(Severity::Error))
}

pub(super) fn classify(error: &tokio_postgres::Error) -> CommitError {
    if statement_was_rejected(error) {
        CommitError::Unavailable(format!("PostgreSQL rejected the increment: {error}"))
    } else {
        CommitError::Unknown(error.to_string())
    }
}
