//! How a connection ends after an answer without losing it, and how a connection over the
//! per-core cap is refused.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::http::Status;
use crate::server::context::ConnContext;
use crate::server::stream::Stream;

use super::batch::write_error;
use super::buffers::{give_read_buffer, take_read_buffer};

/// At most this much of what the client still sends is read and discarded while lingering.
const LINGER_BYTES: usize = 1 << 20;
/// Lingering ends after this long at the latest.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Closes after an answer without losing it, for every close with the client's input possibly
/// unread (an error, a timeout, the connection cap): a close with unread input makes the
/// kernel send RST, which can destroy the response before the client reads it or fail the
/// client's write of the rest of its request. So stop writing (FIN), then discard what the
/// client still sends, for a bounded time and amount.
pub(super) async fn linger(stream: &mut impl Stream, buf: &mut [u8]) -> std::io::Result<()> {
    stream.shutdown_write().await?;
    let drain = async {
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match stream.read(buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    futures_lite::future::or(drain, glommio::timer::sleep(LINGER_TIME)).await;
    Ok(())
}

/// Refused connections that may linger at once on a core (see [`refuse`]).
const MAX_LINGERING_REFUSALS: usize = 1024;

/// Answers a connection over the per-core cap with 503 and closes it, lingering (like every
/// close after an answer) so that bytes the client sent meanwhile do not turn the close into a
/// reset that destroys the 503. A flood of connections past the cap is bounded too: beyond
/// [`MAX_LINGERING_REFUSALS`] lingering at once, a refused connection is closed at once (its
/// client, if it sent a request, may then see a reset instead of the 503), so the refusals
/// cost at most that many tasks and read buffers, not one per connection attempted in the
/// last two seconds.
pub async fn refuse<S: Stream>(ctx: Rc<ConnContext>, mut stream: S) {
    let mut out = Vec::with_capacity(256);
    let mut body = Vec::with_capacity(64);
    write_error(
        &mut out,
        &mut body,
        &ctx.date.borrow(),
        Status::ServiceUnavailable,
        "too many connections",
    );
    if stream.write_all(&out).await.is_err() {
        return;
    }
    drop((out, body));
    let Some(_lingering) = LingeringRefusal::enter(&ctx.lingering_refusals) else {
        return;
    };
    let mut discard = take_read_buffer(&ctx);
    let _ = linger(&mut stream, &mut discard).await;
    give_read_buffer(&ctx, discard);
}

/// A refused connection counted as lingering while this lives (also when its task is dropped
/// at shutdown).
struct LingeringRefusal<'a>(&'a Cell<usize>);

impl<'a> LingeringRefusal<'a> {
    /// `None` when [`MAX_LINGERING_REFUSALS`] already linger.
    fn enter(lingering: &'a Cell<usize>) -> Option<Self> {
        (lingering.get() < MAX_LINGERING_REFUSALS).then(|| {
            lingering.set(lingering.get() + 1);
            LingeringRefusal(lingering)
        })
    }
}

impl Drop for LingeringRefusal<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}
