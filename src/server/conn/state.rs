//! What a connection is doing, as one value. The registry's phase (which timeout applies, and
//! whether the sweeper may interrupt the connection) follows from it: [`State::phase`] is the
//! one mapping, and `Conn::enter` the one place that sets it.

use crate::server::registry::Phase;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// No request has started: waiting for the first byte of one, under the idle timeout.
    Idle { deadline: u64 },
    /// Part of a request has arrived. The request timeout counts from its first byte;
    /// `continue_sent` says a `100 Continue` already went out for it (RFC 9110 §10.1.1).
    Reading { deadline: u64, continue_sent: bool },
    /// Answering the requests in the buffer; no timeout (the counter has its own).
    Answering,
    /// Writing a batch of responses, under one deadline for the whole batch: a client that
    /// reads a few bytes at a time would restart a per-send timeout forever.
    Writing { deadline: u64 },
    /// After the last answer: write side shut, discarding what the client still sends, for a
    /// bounded time the connection keeps with its own timer.
    Lingering,
}

impl State {
    /// The registry's phase and deadline (a coarse-clock second) for this state.
    pub(super) fn phase(self) -> (Phase, u64) {
        match self {
            State::Idle { deadline } => (Phase::Idle, deadline),
            State::Reading { deadline, .. } => (Phase::Reading, deadline),
            State::Answering | State::Lingering => (Phase::Busy, 0),
            State::Writing { deadline } => (Phase::Writing, deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_waiting_states_have_a_deadline_the_sweeper_enforces() {
        assert_eq!(State::Idle { deadline: 7 }.phase(), (Phase::Idle, 7));
        let reading = State::Reading {
            deadline: 9,
            continue_sent: false,
        };
        assert_eq!(reading.phase(), (Phase::Reading, 9));
        assert_eq!(State::Writing { deadline: 3 }.phase(), (Phase::Writing, 3));
        assert_eq!(State::Answering.phase().0, Phase::Busy);
        assert_eq!(State::Lingering.phase().0, Phase::Busy);
    }
}
