//! One batch of pipelined requests: frame the complete requests in the input, answer each
//! through [`api::dispatch`], and lay their responses out in request order (RFC 9112 §9.3.2)
//! in one output buffer, written with one call. An increment's response is not known until
//! its commit: its place in the output is kept, and the responses are spliced together once
//! the commits are in. No I/O and no timeouts here: the connection writes what this makes.

use std::cell::RefCell;
use std::time::Instant;

use crate::api::{self, pending::Pending, KeyField, Reply, Request, Route};
use crate::http::response::{write_message_body, CONTENT_TYPE_JSON, CONTINUE};
use crate::http::{
    self, BodyLocation, Head, HttpDate, Method, Parsed, Persistence, ResponseHead, Status,
};
use crate::metrics::CoreMetrics;
use crate::server::context::ConnContext;

use super::buffers::{shrink_bytes, shrink_entries, Input};

/// A batch of responses stops growing once it holds this much: it is written, and the
/// requests still buffered are answered after it. So a client pipelining thousands of requests
/// without reading costs at most this (plus one response) of pending output, not megabytes.
/// 32 KiB is ~250 small responses: one write per batch is kept for any sane pipeline depth.
pub(super) const MAX_PENDING_OUTPUT_BYTES: usize = 32 * 1024;

/// Likewise in requests, which bounds the counter increments waiting for a commit (their
/// responses are put together only after it) and the per-batch bookkeeping.
pub(super) const MAX_BATCH_REQUESTS: usize = 256;

/// What comes after a batch's responses are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Read more: the buffer ends with part of a request (or nothing). `expects_continue`:
    /// that request's head asked for `100 Continue` before its body.
    Read { expects_continue: bool },
    /// The batch reached its bound with requests still buffered: answer them next.
    Answer,
    /// The last response closes the connection.
    Close,
}

pub(super) struct Batch {
    /// The batch's responses, in request order, with gaps kept for deferred ones.
    out: Vec<u8>,
    /// An endpoint's response body before it gets its head (the head needs its length).
    body: Vec<u8>,
    /// Increments waiting for their commit: where their response goes in `out`.
    deferred: Vec<Deferred>,
    /// `out` with the deferred responses spliced in.
    assembled: Vec<u8>,
    /// Route index and status of each request answered, recorded in the metrics once the
    /// batch is written (two clock reads per batch, not per request).
    answered: Vec<(usize, Status)>,
    /// When the read that completed this batch's requests returned (request durations).
    arrived: Instant,
    /// The last batch waited for a commit (see `Stream::read_after_commit`).
    waited_for_commit: bool,
}

struct Deferred {
    at: usize,
    pending: Pending,
    persistence: Persistence,
    head_only: bool,
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            out: Vec::new(),
            body: Vec::new(),
            deferred: Vec::new(),
            assembled: Vec::new(),
            answered: Vec::new(),
            arrived: Instant::now(),
            waited_for_commit: false,
        }
    }

    /// The requests about to be answered arrived now.
    pub fn arrived(&mut self) {
        self.arrived = Instant::now();
    }

    /// Whether the last batch written waited for a commit; cleared by asking.
    pub fn take_waited_for_commit(&mut self) -> bool {
        std::mem::take(&mut self.waited_for_commit)
    }

    /// Frames and answers the complete requests in `input` from `from`, until the batch
    /// reaches its bound. Returns where it stopped and what comes after these responses.
    pub fn answer_buffered(
        &mut self,
        ctx: &ConnContext,
        input: &mut Input,
        from: usize,
    ) -> (usize, Next) {
        let date = ctx.date.borrow();
        self.out.clear();
        let mut pos = from;
        while pos < input.filled {
            let parsed = http::parse(
                &input.buf[pos..input.filled],
                &mut input.request,
                &ctx.limits,
                &mut input.decoded_body,
            );
            let (head, body, len) = match parsed {
                Ok(Parsed::Complete { head, body, len }) => (head, body, len),
                Ok(Parsed::EmptyLines { len }) => {
                    pos += len;
                    continue;
                }
                Ok(Parsed::Partial { head }) => {
                    let expects_continue = head.is_some_and(|h| h.expect_continue);
                    return (pos, Next::Read { expects_continue });
                }
                Err(err) => {
                    // After the responses before it: they were answered.
                    self.append_error(&date, err.status(), &err.to_string());
                    return (pos, Next::Close);
                }
            };
            let start = pos;
            pos += len;
            let persistence = self.answer(ctx, input, start, &head, body, &date);
            if persistence == Persistence::Close {
                return (pos, Next::Close);
            }
            if self.out.len() >= MAX_PENDING_OUTPUT_BYTES
                || self.answered.len() + self.deferred.len() >= MAX_BATCH_REQUESTS
            {
                return (pos, Next::Answer);
            }
        }
        (
            pos,
            Next::Read {
                expects_continue: false,
            },
        )
    }

    /// Answers the complete request at `start` of the input: its response goes into the
    /// batch's output (or, for an increment, its place there is kept until the commit).
    /// Returns whether the connection stays open after it.
    fn answer(
        &mut self,
        ctx: &ConnContext,
        input: &mut Input,
        start: usize,
        head: &Head,
        body: BodyLocation,
        date: &HttpDate,
    ) -> Persistence {
        let route = Route::from_path(&input.buf[start + head.path.start..start + head.path.end]);
        // The head and an in-buffer body are disjoint (the body starts at `head_len`): the
        // credentials are read from one while the body is parsed in place in the other.
        let (head_bytes, after_head) = input.buf[start..].split_at_mut(head.head_len);
        let authorization = head.authorization.clone().map(|r| &head_bytes[r]);
        let path = &head_bytes[head.path.clone()];
        let idempotency_key = match &head.idempotency_key {
            _ if head.idempotency_key_repeated => KeyField::Repeated,
            Some(r) => KeyField::One(&head_bytes[r.clone()]),
            None => KeyField::Absent,
        };
        let body: &mut [u8] = match body {
            BodyLocation::Input(r) => {
                &mut after_head[r.start - head.head_len..r.end - head.head_len]
            }
            BodyLocation::Scratch => &mut input.decoded_body,
        };
        let persistence = persistence(head, ctx.shutting_down.get());
        let head_only = head.method == Method::Head;
        self.body.clear();
        let request = Request {
            method: head.method,
            route,
            path,
            body,
            authorization,
            idempotency_key,
        };
        match api::dispatch(&ctx.app, request, &mut self.body) {
            Reply::Now(response) => {
                let head = response.head(persistence, head_only);
                http::write_response(&mut self.out, &head, date, &self.body);
                self.answered
                    .push((Route::metric_index(route), response.status));
            }
            Reply::Later(pending) => self.deferred.push(Deferred {
                at: self.out.len(),
                pending,
                persistence,
                head_only,
            }),
        }
        persistence
    }

    /// Appends `100 Continue` (RFC 9110 §10.1.1) after the batch's responses.
    pub fn send_continue(&mut self) {
        self.out.extend_from_slice(CONTINUE);
    }

    /// The bytes to write for this batch: its responses, once the commits of any increments
    /// among them are in and their responses spliced into place.
    pub async fn output(&mut self, date: &RefCell<HttpDate>) -> &[u8] {
        if self.deferred.is_empty() {
            return &self.out;
        }
        self.waited_for_commit = true;
        let mut out = std::mem::take(&mut self.assembled);
        out.clear();
        let mut copied = 0;
        for deferred in std::mem::take(&mut self.deferred) {
            out.extend_from_slice(&self.out[copied..deferred.at]);
            copied = deferred.at;
            self.body.clear();
            let response = deferred.pending.await.respond(&mut self.body);
            let head = response.head(deferred.persistence, deferred.head_only);
            http::write_response(&mut out, &head, &date.borrow(), &self.body);
            self.answered
                .push((Route::metric_index(Some(Route::Counter)), response.status));
        }
        out.extend_from_slice(&self.out[copied..]);
        self.assembled = out;
        &self.assembled
    }

    /// Replaces the output with one error response that closes the connection.
    pub fn error(&mut self, date: &HttpDate, status: Status, msg: &str) {
        self.out.clear();
        self.append_error(date, status, msg);
    }

    /// Appends an error response that closes the connection.
    fn append_error(&mut self, date: &HttpDate, status: Status, msg: &str) {
        write_error(&mut self.out, &mut self.body, date, status, msg);
        self.answered.push((Route::metric_index(None), status));
    }

    /// Records the answered requests with the time since the batch arrived.
    pub fn record(&mut self, metrics: &CoreMetrics) {
        if self.answered.is_empty() {
            return;
        }
        let elapsed = self.arrived.elapsed();
        for (route, status) in self.answered.drain(..) {
            metrics.record_request(route, status, elapsed);
        }
    }

    /// Shrinks what a large batch grew back (the connection is idle): 16,384 idle
    /// connections per core must not each keep 100+ KiB. A few comparisons when nothing grew.
    pub fn shrink(&mut self) {
        for buf in [&mut self.out, &mut self.assembled, &mut self.body] {
            shrink_bytes(buf);
        }
        shrink_entries(&mut self.answered);
        shrink_entries(&mut self.deferred);
    }

    /// Frees everything (the sweeper asked this idle connection).
    pub fn release(&mut self) {
        *self = Batch {
            waited_for_commit: self.waited_for_commit,
            ..Batch::new()
        };
    }
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

/// Appends an error response that closes the connection; `body` is scratch.
pub(super) fn write_error(
    out: &mut Vec<u8>,
    body: &mut Vec<u8>,
    date: &HttpDate,
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
