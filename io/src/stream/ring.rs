//! The ring of pinned, aligned buffers reads land in, and the one-owner handle of a slot.
//!
//! One allocation is cut into `n_slots` slots of `slot_size` bytes, each aligned for direct
//! I/O. The memory is locked (`mlock`) so the kernel can DMA into it without faulting and it is
//! never swapped out between the read and the compute; the reader registers each slot with
//! io_uring as a fixed buffer.
//!
//! A slot is in exactly one of three states, and the type system keeps them apart:
//! - free: its index is in the pool's free list;
//! - reading: the reader popped it for a request and holds only its index until the request
//!   completes (no Rust reference to its bytes exists, the kernel writes them);
//! - loaded: a [`LoadedSlot`] owns it and hands out `&[u8]`; dropping the handle pushes the
//!   index back onto the free list.
//!
//! So a read in flight and the compute can never alias the same bytes.
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ops::{Deref, Range};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::StreamError;

/// The memory behind a ring: one aligned, locked allocation shared (through `Arc`) by the
/// reader and every loaded handle, so it is freed only when the last of them is gone.
pub(crate) struct PoolMemory {
    ptr: NonNull<u8>,
    layout: Layout,
    slot_size: usize,
    n_slots: usize,
    locked: bool,
    free: Mutex<Vec<usize>>,
}

// SAFETY: the pool's bytes are only reached through slot indexes handed out once (free list
// behind a mutex), so moving or sharing the pool between threads cannot create aliasing
// mutable access; the pointer itself is plain data.
unsafe impl Send for PoolMemory {}
// SAFETY: as above: shared access goes through the mutex-protected free list and through
// `LoadedSlot`, which owns its slot exclusively.
unsafe impl Sync for PoolMemory {}

impl std::fmt::Debug for PoolMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMemory")
            .field("slot_size", &self.slot_size)
            .field("n_slots", &self.n_slots)
            .field("locked", &self.locked)
            .finish()
    }
}

/// Current `RLIMIT_MEMLOCK` soft limit in bytes (`None` = unlimited or unknown).
pub fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a pointer to a live local.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(lim.rlim_cur)
}

impl PoolMemory {
    /// Allocates and locks `n_slots` slots of `slot_size` bytes aligned to `align`.
    pub(crate) fn new(
        n_slots: usize,
        slot_size: usize,
        align: usize,
    ) -> Result<Arc<PoolMemory>, StreamError> {
        if n_slots == 0 || slot_size == 0 || !align.is_power_of_two() {
            return Err(StreamError::BadRing(
                "need at least one slot of at least one block",
            ));
        }
        let slot_size = slot_size
            .checked_next_multiple_of(align)
            .ok_or(StreamError::BadRing("slot size overflows"))?;
        let total = slot_size
            .checked_mul(n_slots)
            .ok_or(StreamError::BadRing("ring size overflows"))?;
        let layout = Layout::from_size_align(total, align.max(4096))
            .map_err(|_| StreamError::BadRing("ring size overflows"))?;
        // SAFETY: `layout` has a non-zero size (n_slots and slot_size are at least 1).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(StreamError::OutOfMemory(total as u64))?;
        // SAFETY: `ptr` points at `total` bytes just allocated and owned by this function.
        let rc = unsafe { libc::mlock(ptr.as_ptr().cast(), total) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: allocated above with this layout and not shared.
            unsafe { dealloc(ptr.as_ptr(), layout) };
            return Err(StreamError::Memlock {
                bytes: total as u64,
                limit: memlock_limit(),
                source: err,
            });
        }
        Ok(Arc::new(PoolMemory {
            ptr,
            layout,
            slot_size,
            n_slots,
            locked: true,
            free: Mutex::new((0..n_slots).rev().collect()),
        }))
    }

    pub(crate) fn slot_size(&self) -> usize {
        self.slot_size
    }

    pub(crate) fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Takes a free slot, if any.
    pub(crate) fn check_out(&self) -> Option<usize> {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Returns slot `index` to the free list.
    pub(crate) fn check_in(&self, index: usize) {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(index);
    }

    /// Free slots right now.
    pub(crate) fn n_free(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Start of slot `index` (for the kernel or the pread thread; never dereferenced here).
    pub(crate) fn slot_ptr(&self, index: usize) -> *mut u8 {
        assert!(index < self.n_slots, "slot index out of range");
        // SAFETY: index < n_slots, so the offset stays inside the allocation of
        // n_slots * slot_size bytes.
        unsafe { self.ptr.as_ptr().add(index * self.slot_size) }
    }
}

impl Drop for PoolMemory {
    fn drop(&mut self) {
        let total = self.layout.size();
        if self.locked {
            // SAFETY: the range was locked in `new`; unlocking it is always sound.
            unsafe { libc::munlock(self.ptr.as_ptr().cast(), total) };
        }
        // SAFETY: allocated in `new` with exactly this layout; the last `Arc` is going away, so
        // no handle or read refers to it (the reader drains its reads before dropping its Arc).
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A slot whose read has completed: the only owner of its bytes until dropped, when the slot
/// goes back to the ring. Dereferences to the requested byte range (the inner part of the
/// aligned range that was read), without copying.
pub struct LoadedSlot {
    pool: Arc<PoolMemory>,
    index: usize,
    inner: Range<usize>,
    file_range: Range<u64>,
}

impl std::fmt::Debug for LoadedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSlot")
            .field("slot", &self.index)
            .field("file_range", &self.file_range)
            .finish()
    }
}

impl LoadedSlot {
    /// Wraps a slot whose read completed. `inner` must lie within the slot.
    pub(crate) fn new(
        pool: Arc<PoolMemory>,
        index: usize,
        inner: Range<usize>,
        file_range: Range<u64>,
    ) -> LoadedSlot {
        assert!(
            inner.start <= inner.end && inner.end <= pool.slot_size(),
            "inner range outside the slot"
        );
        LoadedSlot {
            pool,
            index,
            inner,
            file_range,
        }
    }

    /// The ring slot this handle owns.
    pub fn slot(&self) -> usize {
        self.index
    }

    /// The file bytes this slot holds.
    pub fn file_range(&self) -> Range<u64> {
        self.file_range.clone()
    }
}

impl Deref for LoadedSlot {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let base = self.pool.slot_ptr(self.index);
        // SAFETY: the slot is owned by this handle alone (it left the free list when its read was
        // submitted and returns only in `drop`), its read has completed (handles are created
        // only after every chunk's completion was reaped), and `inner` lies within the slot
        // (checked in `new`), so these bytes are initialised, in bounds and not written by
        // anyone while the borrow lasts.
        unsafe { std::slice::from_raw_parts(base.add(self.inner.start), self.inner.len()) }
    }
}

impl Drop for LoadedSlot {
    fn drop(&mut self) {
        self.pool.check_in(self.index);
    }
}
