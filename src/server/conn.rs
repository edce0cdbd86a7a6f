//! One client connection: read, answer every complete request in the buffer, write the
//! answers with one call per batch, repeat.
//!
//! The loop reads into a buffer that holds at most one request's head and body (so a client
//! cannot make it grow without bound), frames requests with [`http::parse`], lets
//! [`api::dispatch`] answer them from the core's [`App`](crate::api::App) and appends the
//! responses to one output buffer, written once it holds [`MAX_PENDING_OUTPUT_BYTES`] or the
//! buffered requests are all answered (so output is bounded too). Counter increments are
//! answered after their commit; responses keep request order (RFC 9112 §9.3.2). Writes have a
//! deadline; closes after an answer linger; an idle connection gives grown buffers back.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::api::{self, KeyField, Reply, Request, Route};
use crate::http::response::{write_message_body, CONTENT_TYPE_JSON, CONTINUE};
use crate::http::{
    self, BodyLocation, Head, HttpDate, HttpError, Method, Parsed, Persistence, ResponseHead,
    Status,
};

use super::context::ConnContext;
use super::registry::{Interrupt, Phase, Slot};
use super::stream::Stream;

/// Initial size of a connection's read and write buffers; enough for 16-deep pipelining of
/// small requests without growing. Buffers that grew are shrunk back to it when the
/// connection goes idle.
const INITIAL_BUFFER_BYTES: usize = 4096;

/// A batch of responses stops growing once it holds this much: it is written, and the
/// requests still buffered are answered after it. So a client pipelining thousands of requests
/// without reading costs at most this (plus one response) of pending output, not megabytes.
/// 32 KiB is ~250 small responses: one write per batch is kept for any sane pipeline depth.
const MAX_PENDING_OUTPUT_BYTES: usize = 32 * 1024;

/// Likewise in requests, which bounds the counter increments waiting for a commit (their
/// responses are put together only after it) and the per-batch bookkeeping.
const MAX_BATCH_REQUESTS: usize = 256;

/// Per-connection state that outlives one read.
struct Conn {
    ctx: Rc<ConnContext>,
    slot: Rc<Slot>,
    /// Bytes read; `filled` of them are valid.
    rbuf: Vec<u8>,
    filled: usize,
    /// Responses of the current batch, written with one call.
    wbuf: Vec<u8>,
    /// A handler's response body before it gets its head (the head needs its length).
    response_body: Vec<u8>,
    /// A chunked request body, decoded.
    decoded_body: Vec<u8>,
    /// What the framer knows of the request at the start of the buffer (its head, how far
    /// its chunked body is decoded), so no byte is parsed twice across reads.
    request_state: http::RequestState,
    /// Increments of this batch waiting for their commit: where their response goes in
    /// `wbuf`, and what it looks like.
    deferred: Vec<Deferred>,
    /// Responses put together around the deferred ones.
    assembled: Vec<u8>,
    /// The last batch waited for a commit: read the next one speculatively (see `read`).
    after_commit: bool,
    /// `100 Continue` was sent for the request now being read.
    continue_sent: bool,
    /// Coarse-clock deadline of the request being read, from its first byte.
    request_deadline: u64,
    /// When the read that completed this batch's requests returned (for request durations).
    batch_arrived: Instant,
    /// Route index and status of each request answered in this batch, recorded in the
    /// metrics once the batch is written (two clock reads per batch, not per request).
    answered: Vec<(usize, Status)>,
    /// The connection timed out reading a request and was answered 408.
    answered_timeout: bool,
}

struct Deferred {
    at: usize,
    pending: api::counter::Pending,
    persistence: Persistence,
    head_only: bool,
}

/// What to do after a batch of responses is written.
#[derive(PartialEq, Eq)]
enum Next {
    Read,
    /// The batch reached its bound with requests still buffered: answer them next.
    Answer,
    Close,
}

/// Serves a connection until the client closes it, an error closes it, or a timeout does.
pub async fn serve<S: Stream>(ctx: Rc<ConnContext>, mut stream: S) {
    let registry = &ctx.registry;
    let slot = registry.insert(registry.now() + ctx.idle_timeout_secs + 1);
    let metrics = ctx.app.metrics();
    metrics.open_connections.add(1);
    let mut conn = Conn {
        ctx: ctx.clone(),
        slot,
        rbuf: Vec::new(),
        filled: 0,
        wbuf: Vec::new(),
        response_body: Vec::new(),
        decoded_body: Vec::new(),
        request_state: http::RequestState::default(),
        deferred: Vec::new(),
        assembled: Vec::new(),
        after_commit: false,
        continue_sent: false,
        request_deadline: 0,
        batch_arrived: Instant::now(),
        answered: Vec::new(),
        answered_timeout: false,
    };
    if let Err(err) = conn.run(&mut stream).await {
        log::debug!("connection closed: {err}");
    }
}

impl Drop for Conn {
    /// Leaves the registry, also when a bug made the connection task panic.
    fn drop(&mut self) {
        let metrics = self.ctx.app.metrics();
        if self.slot.timed_out() || self.answered_timeout {
            metrics.timed_out_connections.add(1);
        }
        self.ctx.registry.remove(&self.slot);
        metrics.open_connections.sub(1);
        give_read_buffer(&self.ctx, std::mem::take(&mut self.rbuf));
    }
}

impl Conn {
    async fn run<S: Stream>(&mut self, stream: &mut S) -> std::io::Result<()> {
        // No buffer until the client sends: allocated here, given back when idle.
        self.slot.holds_no_buffers();
        loop {
            if self.rbuf.is_empty() {
                self.wait_readable(stream).await?;
                self.rbuf = take_read_buffer(&self.ctx);
            }
            if self.filled == self.rbuf.len() && !self.grow_read_buffer() {
                // Only reachable with a chunked body whose framing overhead is excessive.
                return self.reject(stream, HttpError::BodyTooLarge).await;
            }
            let Some(n) = self.read(stream).await? else {
                self.give_back_all_buffers(stream);
                continue;
            };
            // Bytes won a race with the sweeper's request, if it made one: not idle now.
            self.slot.holds_buffers();
            if n == 0 {
                if self.slot.timed_out() && self.filled > 0 {
                    return self.reject_timeout(stream).await;
                }
                return Ok(());
            }
            self.batch_arrived = Instant::now();
            let registry = &self.ctx.registry;
            if self.filled == 0 {
                self.request_deadline = registry.now() + self.ctx.request_timeout_secs + 1;
            }
            self.filled += n;
            self.slot.set_phase(Phase::Busy, 0);

            // Answer what the buffer holds, one bounded batch at a time: a client pipelining
            // thousands of requests without reading gets them answered as it takes them.
            let mut consumed = 0;
            loop {
                let (end, next) = self.answer_buffered(consumed);
                let flushed = self.flush(stream).await;
                self.record_answered();
                flushed?;
                consumed = end;
                match next {
                    Next::Read => break,
                    Next::Answer => {}
                    Next::Close => return self.linger(stream).await,
                }
            }

            self.rbuf.copy_within(consumed..self.filled, 0);
            self.filled -= consumed;
            let registry = &self.ctx.registry;
            if self.filled == 0 {
                if self.ctx.shutting_down.get() {
                    return Ok(());
                }
                let deadline = registry.now() + self.ctx.idle_timeout_secs + 1;
                self.slot.set_phase(Phase::Idle, deadline);
                self.give_back_buffers();
                if S::WAITS_WITHOUT_BUFFER {
                    give_read_buffer(&self.ctx, std::mem::take(&mut self.rbuf));
                }
                stream.trim();
            } else {
                if consumed > 0 {
                    // A new request started in this read: its own timeout starts now.
                    self.request_deadline = registry.now() + self.ctx.request_timeout_secs + 1;
                }
                self.slot.set_phase(Phase::Reading, self.request_deadline);
            }
        }
    }

    /// Reads what the client sent next; right after a batch that waited for a commit, the
    /// stream's own way to read then (see `Stream::read_after_commit`). `None` when the
    /// sweeper asked this idle connection to give its buffers back.
    async fn read<S: Stream>(&mut self, stream: &mut S) -> std::io::Result<Option<usize>> {
        let after_commit = std::mem::take(&mut self.after_commit);
        let buf = &mut self.rbuf[self.filled..];
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
    fn give_back_all_buffers<S: Stream>(&mut self, stream: &mut S) {
        give_read_buffer(&self.ctx, std::mem::take(&mut self.rbuf));
        self.wbuf = Vec::new();
        self.assembled = Vec::new();
        self.response_body = Vec::new();
        self.decoded_body = Vec::new();
        self.answered = Vec::new();
        self.deferred = Vec::new();
        stream.trim();
    }

    /// Waits, holding no read buffer, until the client sends (or the connection's deadline
    /// passes, which the next read then reports). A connection of the ring idles here, so this
    /// is also where it answers the sweeper's request to give its other buffers back; the
    /// request stays marked until the client sends, so it is made once per idle period.
    async fn wait_readable<S: Stream>(&mut self, stream: &mut S) -> std::io::Result<()> {
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
                self.give_back_all_buffers(stream);
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

    /// Frames and answers the complete requests in the read buffer from `from`, until the
    /// batch reaches its bound. Returns where it stopped and what comes after these responses.
    fn answer_buffered(&mut self, from: usize) -> (usize, Next) {
        let ctx = self.ctx.clone();
        let date = ctx.date.borrow();
        self.wbuf.clear();
        let mut pos = from;
        while pos < self.filled {
            let parsed = http::parse(
                &self.rbuf[pos..self.filled],
                &mut self.request_state,
                &ctx.limits,
                &mut self.decoded_body,
            );
            let (head, body, len) = match parsed {
                Ok(Parsed::Complete { head, body, len }) => (head, body, len),
                Ok(Parsed::EmptyLines { len }) => {
                    pos += len;
                    continue;
                }
                Ok(Parsed::Partial { head }) => {
                    if head.is_some_and(|h| h.expect_continue) && !self.continue_sent {
                        self.wbuf.extend_from_slice(CONTINUE);
                        self.continue_sent = true;
                    }
                    return (pos, Next::Read);
                }
                Err(err) => {
                    write_error(
                        &mut self.wbuf,
                        &mut self.response_body,
                        &date,
                        err.status(),
                        &err.to_string(),
                    );
                    self.answered
                        .push((Route::metric_index(None), err.status()));
                    return (pos, Next::Close);
                }
            };
            let start = pos;
            pos += len;
            self.continue_sent = false;
            let persistence = self.answer(start, &head, body, &date);
            if persistence == Persistence::Close {
                return (pos, Next::Close);
            }
            if self.wbuf.len() >= MAX_PENDING_OUTPUT_BYTES
                || self.answered.len() + self.deferred.len() >= MAX_BATCH_REQUESTS
            {
                return (pos, Next::Answer);
            }
        }
        (pos, Next::Read)
    }

    /// Answers the complete request at `start` of the read buffer: its response goes into the
    /// batch's output (or, for an increment, its place there is kept until the commit).
    /// Returns whether the connection stays open after it.
    fn answer(
        &mut self,
        start: usize,
        head: &Head,
        body: BodyLocation,
        date: &HttpDate,
    ) -> Persistence {
        let ctx = &self.ctx;
        let route = Route::from_path(&self.rbuf[start + head.path.start..start + head.path.end]);
        // The head and an in-buffer body are disjoint (the body starts at `head_len`): the
        // credentials are read from one while the body is parsed in place in the other.
        let (head_bytes, after_head) = self.rbuf[start..].split_at_mut(head.head_len);
        let authorization = head.authorization.clone().map(|r| &head_bytes[r]);
        let idempotency_key = match &head.idempotency_key {
            _ if head.idempotency_key_repeated => KeyField::Repeated,
            Some(r) => KeyField::One(&head_bytes[r.clone()]),
            None => KeyField::Absent,
        };
        let body: &mut [u8] = match body {
            BodyLocation::Input(r) => {
                &mut after_head[r.start - head.head_len..r.end - head.head_len]
            }
            BodyLocation::Scratch => &mut self.decoded_body,
        };
        let persistence = persistence(head, ctx.shutting_down.get());
        let head_only = head.method == Method::Head;
        self.response_body.clear();
        let request = Request {
            method: head.method,
            route,
            body,
            authorization,
            idempotency_key,
        };
        match api::dispatch(&ctx.app, request, &mut self.response_body) {
            Reply::Now(response) => {
                let head = response.head(persistence, head_only);
                http::write_response(&mut self.wbuf, &head, date, &self.response_body);
                self.answered
                    .push((Route::metric_index(route), response.status));
            }
            Reply::Later(pending) => self.deferred.push(Deferred {
                at: self.wbuf.len(),
                pending,
                persistence,
                head_only,
            }),
        }
        persistence
    }

    /// Writes this batch's responses with one call, first waiting for the commits of any
    /// increments among them.
    async fn flush<S: Stream>(&mut self, stream: &mut S) -> std::io::Result<()> {
        if self.deferred.is_empty() {
            if !self.wbuf.is_empty() {
                write_before_deadline(&self.ctx, &self.slot, stream, &self.wbuf).await?;
            }
            return Ok(());
        }
        self.after_commit = true;
        let mut out = std::mem::take(&mut self.assembled);
        out.clear();
        let mut copied = 0;
        for deferred in std::mem::take(&mut self.deferred) {
            out.extend_from_slice(&self.wbuf[copied..deferred.at]);
            copied = deferred.at;
            self.response_body.clear();
            let response = deferred.pending.answer(&mut self.response_body).await;
            let head = response.head(deferred.persistence, deferred.head_only);
            let date = self.ctx.date.borrow();
            http::write_response(&mut out, &head, &date, &self.response_body);
            self.answered
                .push((Route::metric_index(Some(Route::Counter)), response.status));
        }
        out.extend_from_slice(&self.wbuf[copied..]);
        let written = write_before_deadline(&self.ctx, &self.slot, stream, &out).await;
        self.assembled = out;
        written
    }

    /// Shrinks the buffers a large request or batch grew back to their initial size, once the
    /// connection is idle: 16,384 idle connections per core must not each keep 100+ KiB.
    /// Costs a few comparisons when nothing grew.
    fn give_back_buffers(&mut self) {
        if self.rbuf.len() > INITIAL_BUFFER_BYTES {
            self.rbuf.truncate(INITIAL_BUFFER_BYTES);
            self.rbuf.shrink_to_fit();
        }
        for buf in [
            &mut self.wbuf,
            &mut self.assembled,
            &mut self.response_body,
            &mut self.decoded_body,
        ] {
            if buf.capacity() > INITIAL_BUFFER_BYTES {
                buf.clear();
                buf.shrink_to(INITIAL_BUFFER_BYTES);
            }
        }
        if self.answered.capacity() > 64 {
            self.answered.clear();
            self.answered.shrink_to(64);
        }
        if self.deferred.capacity() > 64 {
            self.deferred.clear();
            self.deferred.shrink_to(64);
        }
    }

    /// Grows the read buffer for a request larger than it; false once the buffer has reached
    /// the most one request may need (head + body, plus room for chunked framing).
    fn grow_read_buffer(&mut self) -> bool {
        let limits = &self.ctx.limits;
        let max = limits.max_head_bytes + 2 * limits.max_body_bytes + INITIAL_BUFFER_BYTES;
        if self.rbuf.len() >= max {
            return false;
        }
        let new_len = (self.rbuf.len() * 2).min(max);
        // Exactly: the stated worst case per connection counts this buffer at its limit.
        self.rbuf.reserve_exact(new_len - self.rbuf.len());
        self.rbuf.resize(new_len, 0);
        true
    }

    async fn reject<S: Stream>(&mut self, stream: &mut S, err: HttpError) -> std::io::Result<()> {
        self.prepare_error(err.status(), &err.to_string());
        write_before_deadline(&self.ctx, &self.slot, stream, &self.wbuf).await?;
        self.linger(stream).await
    }

    async fn reject_timeout<S: Stream>(&mut self, stream: &mut S) -> std::io::Result<()> {
        // The read's deadline has passed; the 408 gets a write deadline of its own.
        self.answered_timeout = true;
        self.slot.rearm();
        self.prepare_error(Status::RequestTimeout, "request timed out");
        write_before_deadline(&self.ctx, &self.slot, stream, &self.wbuf).await?;
        self.linger(stream).await
    }

    /// Replaces the output with one error response that closes the connection.
    fn prepare_error(&mut self, status: Status, msg: &str) {
        self.wbuf.clear();
        write_error(
            &mut self.wbuf,
            &mut self.response_body,
            &self.ctx.date.borrow(),
            status,
            msg,
        );
        self.answered.push((Route::metric_index(None), status));
        self.record_answered();
    }

    /// Records this batch's answered requests with the time since the batch arrived.
    fn record_answered(&mut self) {
        if self.answered.is_empty() {
            return;
        }
        let elapsed = self.batch_arrived.elapsed();
        let metrics = self.ctx.app.metrics();
        for (route, status) in self.answered.drain(..) {
            metrics.record_request(route, status, elapsed);
        }
    }

    /// See [`linger`]; the connection bounds it with its own timer, so the sweeper leaves it
    /// alone meanwhile.
    async fn linger<S: Stream>(&mut self, stream: &mut S) -> std::io::Result<()> {
        self.slot.set_phase(Phase::Busy, 0);
        linger(stream, &mut self.rbuf).await
    }
}

/// Read buffers a core keeps unused at most (1 MiB): more than its busy connections need at once
/// in any of the benchmarks, few enough not to matter when they all idle.
const MAX_POOLED_READ_BUFFERS: usize = 256;

/// A read buffer of the initial size: one a connection gave back, or a new one.
fn take_read_buffer(ctx: &ConnContext) -> Vec<u8> {
    ctx.read_buffers
        .borrow_mut()
        .pop()
        .unwrap_or_else(|| vec![0; INITIAL_BUFFER_BYTES])
}

/// Keeps a connection's read buffer for the next one that needs it (when it has the initial
/// size and the pool has room), or frees it.
fn give_read_buffer(ctx: &ConnContext, buf: Vec<u8>) {
    let mut pool = ctx.read_buffers.borrow_mut();
    if buf.len() == INITIAL_BUFFER_BYTES && pool.len() < MAX_POOLED_READ_BUFFERS {
        pool.push(buf);
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
    slot: &Slot,
    stream: &mut impl Stream,
    out: &[u8],
) -> std::io::Result<()> {
    let deadline = ctx.registry.now() + ctx.request_timeout_secs + 1;
    slot.set_phase(Phase::Writing, deadline);
    let write = stream.write_all(out);
    let expired = async {
        slot.expired().await;
        Err(std::io::ErrorKind::TimedOut.into())
    };
    let written = futures_lite::future::or(write, expired).await;
    slot.set_phase(Phase::Busy, 0);
    if written.is_err() {
        // Abortive close: frees the kernel's send buffer at once instead of trickling it out.
        // SAFETY: the descriptor is this connection's socket, open for as long as `stream`,
        // which outlives this borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.raw_fd()) };
        let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
    }
    written
}

/// Closes after an answer without losing it, for every close with the client's input possibly
/// unread (an error, a timeout, the connection cap): a close with unread input makes the
/// kernel send RST, which can destroy the response before the client reads it or fail the
/// client's write of the rest of its request. So stop writing (FIN), then discard what the
/// client still sends, for a bounded time and amount.
async fn linger(stream: &mut impl Stream, buf: &mut [u8]) -> std::io::Result<()> {
    const LINGER_BYTES: usize = 1 << 20;
    const LINGER_TIME: Duration = Duration::from_secs(2);
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

/// What the response's `Connection` header says (RFC 9112 §9.3): close when the client asked
/// for it (or is HTTP/1.0 without keep-alive) and while the core drains.
fn persistence(head: &Head, draining: bool) -> Persistence {
    if !head.keep_alive || draining {
        Persistence::Close
    } else if head.http10 {
        Persistence::KeepAliveHttp10
    } else {
        Persistence::KeepAlive
    }
}

/// Appends an error response that closes the connection.
fn write_error(
    out: &mut Vec<u8>,
    body: &mut Vec<u8>,
    date: &http::HttpDate,
    status: Status,
    msg: &str,
) {
    body.clear();
    write_message_body(body, msg);
    let head = ResponseHead {
        extra_header: None,
        status,
        content_type: CONTENT_TYPE_JSON,
        persistence: Persistence::Close,
        head_only: false,
        allow: None,
    };
    http::write_response(out, &head, date, body);
}

/// Refused connections that may linger at once on a core (see `refuse`).
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
