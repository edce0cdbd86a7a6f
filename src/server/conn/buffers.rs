//! A connection's buffers and how they are lent: the read buffer comes from the core's pool
//! when the client sends and goes back to it while the connection idles (if the stream can
//! wait without one), buffers a large request or batch grew shrink back once idle, and the
//! sweeper can ask an idle connection for everything it holds (`Interrupt::Trim`), so 10,000
//! idle keep-alive connections cost little memory. Nothing here parses or answers.

use crate::http::{self, Limits};
use crate::server::context::ConnContext;

/// Initial size of a connection's read and write buffers; enough for 16-deep pipelining of
/// small requests without growing. Buffers that grew are shrunk back to it when the
/// connection goes idle.
pub(super) const INITIAL_BUFFER_BYTES: usize = 4096;

/// Read buffers a core keeps unused at most (1 MiB): more than its busy connections need at
/// once, few enough not to matter when they all idle.
const MAX_POOLED_READ_BUFFERS: usize = 256;

/// Bookkeeping vectors (answered requests, deferred increments) keep at most this capacity
/// while idle.
const IDLE_ENTRIES: usize = 64;

/// What the client sent that is not answered yet, and the framer's progress through it.
#[derive(Default)]
pub(super) struct Input {
    /// Bytes read; `filled` of them are valid. Empty while lent back to the pool.
    pub buf: Vec<u8>,
    pub filled: usize,
    /// What the framer knows of the request at the start of the buffer (its head, how far its
    /// chunked body is decoded), so no byte is parsed twice across reads.
    pub request: http::RequestState,
    /// A chunked request body, decoded.
    pub decoded_body: Vec<u8>,
}

impl Input {
    /// Whether a read buffer is held.
    pub fn has_buffer(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Takes a read buffer from the core's pool (or a new one).
    pub fn borrow_buffer(&mut self, ctx: &ConnContext) {
        self.buf = take_read_buffer(ctx);
    }

    /// Gives the read buffer back to the core's pool.
    pub fn lend_buffer(&mut self, ctx: &ConnContext) {
        give_read_buffer(ctx, std::mem::take(&mut self.buf));
    }

    /// Drops the `consumed` bytes answered from the front of the buffer.
    pub fn consume(&mut self, consumed: usize) {
        self.buf.copy_within(consumed..self.filled, 0);
        self.filled -= consumed;
    }

    /// Grows the buffer for a request larger than it; false once the buffer has reached the
    /// most one request may need (head + body, plus room for chunked framing).
    pub fn grow(&mut self, limits: &Limits) -> bool {
        let max = limits.max_head_bytes + 2 * limits.max_body_bytes + INITIAL_BUFFER_BYTES;
        if self.buf.len() >= max {
            return false;
        }
        let new_len = (self.buf.len() * 2).min(max);
        // Exactly: the stated worst case per connection counts this buffer at its limit.
        self.buf.reserve_exact(new_len - self.buf.len());
        self.buf.resize(new_len, 0);
        true
    }

    /// Shrinks what a large request grew back to the initial size (the connection is idle).
    pub fn shrink(&mut self) {
        if self.buf.len() > INITIAL_BUFFER_BYTES {
            self.buf.truncate(INITIAL_BUFFER_BYTES);
            self.buf.shrink_to_fit();
        }
        shrink_bytes(&mut self.decoded_body);
    }

    /// Frees everything (the sweeper asked); the read buffer goes back to the pool.
    pub fn release(&mut self, ctx: &ConnContext) {
        self.lend_buffer(ctx);
        self.decoded_body = Vec::new();
    }
}

/// A byte buffer that grew past the initial size is emptied and shrunk back to it.
pub(super) fn shrink_bytes(buf: &mut Vec<u8>) {
    if buf.capacity() > INITIAL_BUFFER_BYTES {
        buf.clear();
        buf.shrink_to(INITIAL_BUFFER_BYTES);
    }
}

/// A bookkeeping vector that grew past [`IDLE_ENTRIES`] is emptied and shrunk back to it.
pub(super) fn shrink_entries<T>(entries: &mut Vec<T>) {
    if entries.capacity() > IDLE_ENTRIES {
        entries.clear();
        entries.shrink_to(IDLE_ENTRIES);
    }
}

/// A read buffer of the initial size: one a connection gave back, or a new one.
pub(super) fn take_read_buffer(ctx: &ConnContext) -> Vec<u8> {
    ctx.read_buffers
        .borrow_mut()
        .pop()
        .unwrap_or_else(|| vec![0; INITIAL_BUFFER_BYTES])
}

/// Keeps a connection's read buffer for the next one that needs it (when it has the initial
/// size and the pool has room), or frees it.
pub(super) fn give_read_buffer(ctx: &ConnContext, buf: Vec<u8>) {
    let mut pool = ctx.read_buffers.borrow_mut();
    if buf.len() == INITIAL_BUFFER_BYTES && pool.len() < MAX_POOLED_READ_BUFFERS {
        pool.push(buf);
    }
}
