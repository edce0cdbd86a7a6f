//! How a reload is asked for: [`ReloadTrigger`] (SIGHUP, the file watcher, the admin
//! endpoint, from any thread) and the reload thread's end of the channel, [`ReloadRequests`].
//! One request waits at most; more are folded into it. Touches only the channel.

/// Why a reload was asked for, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadReason {
    Signal,
    FileChanged,
    Admin,
}

impl std::fmt::Display for ReloadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReloadReason::Signal => "SIGHUP",
            ReloadReason::FileChanged => "the file changed",
            ReloadReason::Admin => "POST /admin/kv/reload",
        })
    }
}

/// What became of a reload request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    /// A reload will start (or one already waiting will include this request).
    Queued,
    /// tally serves the built-in sample: there is no file to reload.
    NothingToReload,
    /// The reload thread is gone (tally is stopping).
    Stopped,
}

/// Asks the reload thread for a reload; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ReloadTrigger {
    /// Bounded to one: a request that finds one waiting is folded into it.
    tx: flume::Sender<ReloadReason>,
    has_file: bool,
}

impl ReloadTrigger {
    pub fn request(&self, reason: ReloadReason) -> Requested {
        if !self.has_file {
            log::info!(
                "key/value reload ({reason}): nothing to reload, tally serves the built-in sample \
                 (no --kv-data)"
            );
            return Requested::NothingToReload;
        }
        match self.tx.try_send(reason) {
            Ok(()) | Err(flume::TrySendError::Full(_)) => Requested::Queued,
            Err(flume::TrySendError::Disconnected(_)) => Requested::Stopped,
        }
    }
}

/// The reload thread's receiving end, until [`Reloader::spawn`](super::Reloader::spawn) starts it.
pub struct ReloadRequests {
    pub(super) rx: flume::Receiver<ReloadReason>,
}

/// A trigger and the requests it sends. Made before start-up so SIGHUP can be handled from the
/// start; requests made before the reload thread runs wait for it.
pub fn reload_channel(file: Option<&std::path::Path>) -> (ReloadTrigger, ReloadRequests) {
    let (tx, rx) = flume::bounded(1);
    (
        ReloadTrigger {
            tx,
            has_file: file.is_some(),
        },
        ReloadRequests { rx },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_a_file_is_nothing_to_reload() {
        let (trigger, _requests) = reload_channel(None);
        assert_eq!(
            trigger.request(ReloadReason::Signal),
            Requested::NothingToReload
        );
    }

    #[test]
    fn requests_made_while_one_waits_are_folded_into_it() {
        let (trigger, requests) = reload_channel(Some(std::path::Path::new("x.json")));
        for _ in 0..3 {
            assert_eq!(trigger.request(ReloadReason::Admin), Requested::Queued);
        }
        assert_eq!(requests.rx.len(), 1);
        drop(requests);
        assert_eq!(trigger.request(ReloadReason::Admin), Requested::Stopped);
    }
}
