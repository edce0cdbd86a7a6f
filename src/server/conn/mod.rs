//! One client connection: read, answer every complete request in the buffer, write the
//! answers with one call per batch, repeat.
//!
//! The connection is a small state machine ([`State`]): idle, reading a request, answering,
//! writing, lingering before the close. [`Conn::enter`] is the one place the state changes,
//! and with it the registry's phase, which decides the timeout the sweeper enforces. The rooms
//! beside this file:
//! - `batch`: frame the buffered requests, answer them through [`api::dispatch`](crate::api),
//!   and lay out their responses in request order (RFC 9112 §9.3.2), increments spliced in
//!   after their commit; output is bounded per batch;
//! - `buffers`: the read buffer (at most one request's head and body, so a client cannot make
//!   it grow without bound), lent from the core's pool while the client sends, given back
//!   while it idles;
//! - `close`: the lingering close after an answer, and the refusal over the connection cap.

mod batch;
mod buffers;
mod close;
mod state;
#[cfg(test)]
mod tests;

pub use close::refuse;

use std::io;
use std::rc::Rc;
use std::time::Duration;

use crate::http::{HttpError, Status};

use super::context::ConnContext;
use super::registry::{Interrupt, Slot};
use super::stream::Stream;
use batch::{Batch, Next};
use buffers::Input;
use state::State;

struct Conn {
    ctx: Rc<ConnContext>,
    state: State,
    /// This connection's entry in the core's registry (its phase follows `state`).
    slot: Rc<Slot>,
    input: Input,
    batch: Batch,
}

/// Serves a connection until the client closes it, an error closes it, or a timeout does.
pub async fn serve<S: Stream>(ctx: Rc<ConnContext>, mut stream: S) {
    let registry = &ctx.registry;
    let deadline = registry.deadline_in(ctx.idle_timeout_secs);
    let slot = registry.insert(deadline);
    ctx.app.metrics().open_connections.add(1);
    let mut conn = Conn {
        ctx: ctx.clone(),
        state: State::Idle { deadline },
        slot,
        input: Input::default(),
        batch: Batch::new(),
    };
    if let Err(err) = conn.run(&mut stream).await {
        log::debug!("connection closed: {err}");
    }
}

impl Drop for Conn {
    /// Leaves the registry, also when a bug made the connection task panic.
    fn drop(&mut self) {
        let metrics = self.ctx.app.metrics();
        if self.slot.ever_timed_out() {
            metrics.timed_out_connections.add(1);
        }
        self.ctx.registry.remove(&self.slot);
        metrics.open_connections.sub(1);
        self.input.lend_buffer(&self.ctx);
    }
}

/// The one place a connection's state changes: the registry's phase follows it.
fn enter(state: &mut State, slot: &Slot, next: State) {
    *state = next;
    let (phase, deadline) = next.phase();
    slot.set_phase(phase, deadline);
}

impl Conn {
    fn enter(&mut self, next: State) {
        enter(&mut self.state, &self.slot, next);
    }

    async fn run<S: Stream>(&mut self, stream: &mut S) -> io::Result<()> {
        // No buffer until the client sends: borrowed here, lent back when idle.
        self.slot.holds_no_buffers();
        loop {
            if !self.input.has_buffer() {
                self.wait_readable(stream).await?;
                self.input.borrow_buffer(&self.ctx);
            }
            if self.input.filled == self.input.buf.len() && !self.input.grow(&self.ctx.limits) {
                // Only reachable with a chunked body whose framing overhead is excessive.
                return self.reject(stream, HttpError::BodyTooLarge).await;
            }
            let Some(n) = self.read(stream).await? else {
                self.release_buffers(stream);
                continue;
            };
            // Bytes won a race with the sweeper's request, if it made one: not idle now.
            self.slot.holds_buffers();
            if n == 0 {
                if self.slot.timed_out() && self.input.filled > 0 {
                    return self.reject_timeout(stream).await;
                }
                return Ok(());
            }
            // The request at the front of the buffer: its deadline runs from its first byte.
            let (deadline, continue_sent) = match self.state {
                State::Reading {
                    deadline,
                    continue_sent,
                } if self.input.filled > 0 => (deadline, continue_sent),
                _ => (
                    self.ctx.registry.deadline_in(self.ctx.request_timeout_secs),
                    false,
                ),
            };
            self.input.filled += n;
            self.batch.arrived();
            self.enter(State::Answering);

            // Answer what the buffer holds, one bounded batch at a time: a client pipelining
            // thousands of requests without reading gets them answered as it takes them.
            let mut consumed = 0;
            let continue_sent = loop {
                let (end, next) = self
                    .batch
                    .answer_buffered(&self.ctx, &mut self.input, consumed);
                let mut continue_sent = continue_sent && end == 0;
                if let Next::Read {
                    expects_continue: true,
                } = next
                {
                    if !continue_sent {
                        self.batch.send_continue();
                        continue_sent = true;
                    }
                }
                let flushed = self.flush(stream).await;
                self.batch.record(self.ctx.app.metrics());
                flushed?;
                consumed = end;
                match next {
                    Next::Read { .. } => break continue_sent,
                    Next::Answer => {}
                    Next::Close => return self.linger(stream).await,
                }
            };

            self.input.consume(consumed);
            if self.input.filled == 0 {
                if self.ctx.shutting_down.get() {
                    return Ok(());
                }
                self.enter(State::Idle {
                    deadline: self.ctx.registry.deadline_in(self.ctx.idle_timeout_secs),
                });
                self.input.shrink();
                self.batch.shrink();
                if S::WAITS_WITHOUT_BUFFER {
                    self.input.lend_buffer(&self.ctx);
                }
                stream.trim();
            } else {
                // A new request started in this read: its own timeout starts now.
                let deadline = if consumed > 0 {
                    self.ctx.registry.deadline_in(self.ctx.request_timeout_secs)
                } else {
                    deadline
                };
                self.enter(State::Reading {
                    deadline,
                    continue_sent,
                });
            }
        }
    }

    /// Reads what the client sent next; right after a batch that waited for a commit, the
    /// stream's own way to read then (see `Stream::read_after_commit`). `None` when the
    /// sweeper asked this idle connection to give its buffers back.
    async fn read<S: Stream>(&mut self, stream: &mut S) -> io::Result<Option<usize>> {
        let after_commit = self.batch.take_waited_for_commit();
        let buf = &mut self.input.buf[self.input.filled..];
        if let Some(read) = stream.read_now(buf) {
            return read.map(Some);
        }
        let read = async {
            if after_commit {
                stream.read_after_commit(buf).await.map(Some)
            } else {
                stream.read(buf).await.map(Some)
            }
        };
        // The sweeper ends a read past its deadline by waking the slot: as end-of-file.
        let slot = &self.slot;
        futures_lite::future::or(read, async {
            match slot.interrupted().await {
                Interrupt::Expired => Ok(Some(0)),
                Interrupt::Trim => Ok(None),
            }
        })
        .await
    }

    /// Gives back everything this idle connection holds (the sweeper asked, once per idle
    /// period): 10,000 idle keep-alive connections must not each keep their buffers. The next
    /// request gets fresh ones.
    fn release_buffers<S: Stream>(&mut self, stream: &mut S) {
        self.input.release(&self.ctx);
        self.batch.release();
        stream.trim();
    }

    /// Waits, holding no read buffer, until the client sends (or the connection's deadline
    /// passes, which the next read then reports). A connection of the ring idles here, so this
    /// is also where it answers the sweeper's request to give its other buffers back; the
    /// request stays marked until the client sends, so it is made once per idle period.
    async fn wait_readable<S: Stream>(&mut self, stream: &mut S) -> io::Result<()> {
        let slot = self.slot.clone();
        let woke = futures_lite::future::or(async { Some(stream.readable().await) }, async {
            match slot.interrupted().await {
                Interrupt::Expired => Some(Ok(())),
                Interrupt::Trim => None,
            }
        })
        .await;
        let readable = match woke {
            Some(readable) => readable,
            None => {
                self.release_buffers(stream);
                futures_lite::future::or(stream.readable(), async {
                    slot.expired().await;
                    Ok(())
                })
                .await
            }
        };
        slot.holds_buffers();
        readable
    }

    /// Writes this batch's responses with one call, first waiting for the commits of any
    /// increments among them.
    async fn flush<S: Stream>(&mut self, stream: &mut S) -> io::Result<()> {
        let out = self.batch.output(&self.ctx.date).await;
        if out.is_empty() {
            return Ok(());
        }
        write_before_deadline(&self.ctx, &mut self.state, &self.slot, stream, out).await
    }

    async fn reject<S: Stream>(&mut self, stream: &mut S, err: HttpError) -> io::Result<()> {
        self.answer_error(stream, err.status(), &err.to_string())
            .await?;
        self.linger(stream).await
    }

    async fn reject_timeout<S: Stream>(&mut self, stream: &mut S) -> io::Result<()> {
        // The read's deadline has passed; the 408 gets a write deadline of its own.
        self.slot.rearm();
        self.answer_error(stream, Status::RequestTimeout, "request timed out")
            .await?;
        self.linger(stream).await
    }

    /// Writes one error response that closes the connection, in place of any other output.
    async fn answer_error<S: Stream>(
        &mut self,
        stream: &mut S,
        status: Status,
        msg: &str,
    ) -> io::Result<()> {
        self.batch.error(&self.ctx.date.borrow(), status, msg);
        self.batch.record(self.ctx.app.metrics());
        self.flush(stream).await
    }

    /// See [`close::linger`]; the connection bounds it with its own timer, so the sweeper
    /// leaves it alone meanwhile.
    async fn linger<S: Stream>(&mut self, stream: &mut S) -> io::Result<()> {
        self.enter(State::Lingering);
        close::linger(stream, &mut self.input.buf).await
    }
}

/// Writes a batch of responses, within one deadline (the request timeout) for all of it: a
/// client that reads too slowly to take a batch in that time is cut off, with a reset (it is
/// not reading; there is no answer to save).
///
/// The common case costs no system call more: the write is polled first and usually completes
/// at once; the expiry future is polled only when it must wait.
async fn write_before_deadline(
    ctx: &ConnContext,
    state: &mut State,
    slot: &Slot,
    stream: &mut impl Stream,
    out: &[u8],
) -> io::Result<()> {
    let deadline = ctx.registry.deadline_in(ctx.request_timeout_secs);
    enter(state, slot, State::Writing { deadline });
    let write = stream.write_all(out);
    let expired = async {
        slot.expired().await;
        Err(io::ErrorKind::TimedOut.into())
    };
    let written = futures_lite::future::or(write, expired).await;
    enter(state, slot, State::Answering);
    if written.is_err() {
        // Abortive close: frees the kernel's send buffer at once instead of trickling it out.
        // SAFETY: the descriptor is this connection's socket, open for as long as `stream`,
        // which outlives this borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.raw_fd()) };
        let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
    }
    written
}
