//! The store's errors: [`CommitError`], what an increment's caller is told (with
//! [`RowLowered`], what it carries when the row went backwards), and [`StoreError`], why
//! connecting or settling failed (logged, and told to callers while disconnected). Also how a
//! PostgreSQL error maps onto them. No I/O.

use std::time::Duration;

use tokio_postgres::error::Severity;

use super::tls::TlsOptions;

/// The row found below a count this store returned (see [`CommitError::RowLowered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLowered {
    /// The count PostgreSQL last reported.
    pub row: i64,
    /// The highest count this store has returned from a commit.
    pub highest_returned: i64,
}

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

/// Why the store could not connect, or could not settle an in-doubt batch on a connection.
/// Neither reaches an increment directly: the store logs it, retries on a new connection, and
/// while it has none tells callers its text inside [`CommitError::Unavailable`]. Variants say
/// which step failed, so the text names it; the PostgreSQL error, where there is one, is the
/// `source`. Its text is kept in the message too, because that message is all a caller of
/// `add` or an operator reading the log sees.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// The connection string's TLS options (`sslmode`, `sslrootcert`) do not parse.
    #[error("invalid database URL: {0}")]
    InvalidTlsOptions(String),
    /// The rest of the connection string does not parse.
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    /// The TLS settings cannot be put in force (unreadable root certificates, for one).
    #[error("{0}")]
    Tls(String),
    /// PostgreSQL could not be reached, or refused the session (transport, TLS handshake,
    /// authentication). A transport or TLS failure's text adds the causes, which
    /// tokio-postgres's own text omits (why a certificate was refused, say), and the TLS
    /// settings in force.
    #[error("{}", describe_open_failure(.source, .tls))]
    Open {
        #[source]
        source: tokio_postgres::Error,
        tls: TlsOptions,
    },
    /// Connecting plus the schema set-up outlasted the connect timeout.
    #[error("connecting and creating the schema took over {0:?}")]
    ConnectTimeout(Duration),
    /// A statement of the set-up after connecting failed; `step` says which.
    #[error("{step}: {source}")]
    SetUp {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Touching or pruning `tally_instances` failed.
    #[error("keeping tally_instances: {0}")]
    InstanceUpkeep(#[source] tokio_postgres::Error),
    /// A statement of the settling transaction failed: the batch stays in doubt.
    #[error(transparent)]
    Settling(#[from] tokio_postgres::Error),
    /// Running the in-doubt batch again failed: it stays in doubt.
    #[error(transparent)]
    Rerun(#[from] CommitError),
    /// The batch was found committed but one of its keys is no longer stored.
    #[error("key {0:?} of a committed batch is gone")]
    KeyGone(Box<str>),
    /// The batch's deadline passed while settling it: its caller got the outcome unknown.
    #[error("the batch's deadline passed while settling it")]
    SettleExpired,
}

/// [`StoreError::Open`]'s text: a server's own refusal as it is; a transport or TLS failure
/// with its chain of causes and the TLS settings in force.
fn describe_open_failure(error: &tokio_postgres::Error, tls: &TlsOptions) -> String {
    if error.as_db_error().is_some() {
        return error.to_string();
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    format!("{text} ({tls})")
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

/// The [`CommitError`] for a statement of a commit that failed: rejected (not applied) or
/// unknown.
pub(super) fn classify(error: &tokio_postgres::Error) -> CommitError {
    if statement_was_rejected(error) {
        CommitError::Unavailable(format!("PostgreSQL rejected the increment: {error}"))
    } else {
        CommitError::Unknown(error.to_string())
    }
}

impl CommitError {
    /// Whether the connection that gave this error is of no further use (a statement that
    /// timed out or whose answer was lost may still be running on it).
    pub(super) fn leaves_connection_unusable(&self) -> bool {
        matches!(self, CommitError::Timeout | CommitError::Unknown(_))
    }
}
