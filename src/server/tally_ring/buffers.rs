//! The receive buffers a core's ring hands to the kernel (provided buffers, through a
//! registered buffer ring: IORING_REGISTER_PBUF_RING), and every `unsafe` block about them.
//!
//! Invariants (each SAFETY comment below leans on these):
//!
//! 1. Both allocations (the ring of `io_uring_buf` entries and the buffers' memory) are made
//!    in [`BufferRing::new`] and freed only by its `Drop`, which runs after the kernel ring is
//!    closed: `Ring` declares `uring` before `buffers`, so it drops the ring first, and the core
//!    drops a `Ring` only once its driver ended (nothing in flight) and forgets it otherwise
//!    (`core.rs`: the memory is leaked rather than freed under the kernel).
//! 2. Each buffer id (`bid`, below `count`) is in exactly one place: in the ring (the kernel's
//!    to fill), or held by one socket until its bytes are copied out, then pushed back. So at
//!    most `count` entries are ever between the kernel's head and our tail, and a slot is
//!    written ([`BufferRing::push`]) only after the kernel has taken the id that was in it.
//! 3. The kernel reads entries only up to the tail we publish, with an acquire load; we write
//!    an entry before a release store publishes it ([`BufferRing::publish`]).
//! 4. The kernel writes a buffer only while its id is in the ring; tally reads one
//!    ([`BufferRing::buffer`]) only while a socket holds its id, the bytes the completion said.
//!
//! May touch: its own two allocations and the kernel's registration of them; nothing else.

use std::alloc::Layout;
use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{types, IoUring};

/// Receive buffers per core, and their size. A request is usually one buffer; the pool is
/// shared by all connections of the core and is the most memory receiving can take
/// (4 MiB per core).
pub(super) const RECV_BUFFERS: u16 = 1024;
const RECV_BUFFER_BYTES: usize = 4096;
/// The provided-buffer group of the receive buffers.
pub(super) const BUFFER_GROUP: u16 = 0;

/// The receive buffers: one allocation of `count` x `RECV_BUFFER_BYTES`, handed to the
/// kernel through a registered buffer ring. The kernel takes a buffer from the ring's head
/// for each receive; a buffer goes back at the tail once its bytes were copied out.
pub(super) struct BufferRing {
    /// The ring of `io_uring_buf` entries, page aligned, `count` long.
    entries: *mut types::BufRingEntry,
    entries_layout: Layout,
    memory: *mut u8,
    memory_layout: Layout,
    /// Buffers in the ring (a power of two).
    count: u16,
    /// Our copy of the ring's tail (the kernel reads the shared one).
    tail: Cell<u16>,
}

impl BufferRing {
    /// Allocates `count` buffers (a power of two), all of them in the ring and published.
    pub(super) fn new(count: u16) -> BufferRing {
        assert!(
            count.is_power_of_two(),
            "a buffer ring's length is a power of two"
        );
        let entries_layout = Layout::from_size_align(
            count as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .expect("buffer ring layout");
        let memory_layout = Layout::from_size_align(count as usize * RECV_BUFFER_BYTES, 4096)
            .expect("receive buffer layout");
        // SAFETY: both layouts have non-zero sizes. Zeroed entries are valid (the tail in
        // entry 0 starts at 0); the buffers are only ever written by the kernel before read.
        let (entries, memory) = unsafe {
            (
                std::alloc::alloc_zeroed(entries_layout).cast::<types::BufRingEntry>(),
                std::alloc::alloc(memory_layout),
            )
        };
        if entries.is_null() || memory.is_null() {
            std::alloc::handle_alloc_error(memory_layout);
        }
        // Fault the pool in now: the kernel takes buffers round the ring, so all of it becomes
        // resident soon under load anyway. Counted once at start-up, it is a fixed cost per
        // core (docs/api.md, "Memory per connection"), not growth that looks like a per-connection leak.
        // SAFETY: `memory` is a fresh allocation of `memory_layout.size()` bytes.
        unsafe { std::ptr::write_bytes(memory, 0, memory_layout.size()) };
        let ring = BufferRing {
            entries,
            entries_layout,
            memory,
            memory_layout,
            count,
            tail: Cell::new(0),
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        ring
    }

    /// Registers the ring with the kernel as group [`BUFFER_GROUP`].
    pub(super) fn register(&self, uring: &IoUring) -> io::Result<()> {
        // SAFETY: the entries are page aligned and `count` (a power of two) long, and live
        // until the kernel ring is closed (invariant 1).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                self.entries as u64,
                self.count,
                BUFFER_GROUP,
                0,
            )
        }
    }

    /// Puts buffer `bid` at the tail (made visible to the kernel by `publish`).
    pub(super) fn push(&self, bid: u16) {
        let tail = self.tail.get();
        let slot = (tail & (self.count - 1)) as usize;
        // SAFETY: `slot` < count, the ring's length; the kernel only reads entries between
        // its head and the published tail, and this one is past the published tail
        // (invariants 2 and 3).
        unsafe {
            let entry = &mut *self.entries.add(slot);
            entry.set_addr(self.buffer(bid).as_ptr() as u64);
            entry.set_len(RECV_BUFFER_BYTES as u32);
            entry.set_bid(bid);
        }
        self.tail.set(tail.wrapping_add(1));
    }

    /// Publishes the pushed buffers to the kernel (a release store of the shared tail).
    pub(super) fn publish(&self) {
        // SAFETY: the tail field lives in entry 0, inside the allocation; the kernel reads it
        // with an acquire load, so the entries written before are visible to it (invariant 3).
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail.get(), Ordering::Release);
        }
    }

    /// Buffer `bid`'s memory: what a receive that picked it wrote, while a socket holds it.
    pub(super) fn buffer(&self, bid: u16) -> &[u8] {
        debug_assert!(bid < self.count);
        // SAFETY: bid < count (the kernel only hands out the ids we gave it), so the range is
        // inside the allocation; the kernel is not writing it (invariant 4).
        unsafe {
            std::slice::from_raw_parts(
                self.memory.add(bid as usize * RECV_BUFFER_BYTES),
                RECV_BUFFER_BYTES,
            )
        }
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the kernel ring is closed and no
        // receive is in flight (invariant 1).
        unsafe {
            std::alloc::dealloc(self.entries.cast(), self.entries_layout);
            std::alloc::dealloc(self.memory, self.memory_layout);
        }
    }
}
