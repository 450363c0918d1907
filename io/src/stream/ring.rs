//! The ring of pinned, aligned buffers reads land in, and the one-owner handle of a slot.
//!
//! One allocation is cut into `n_slots` slots of `slot_size` bytes, each aligned for direct
//! I/O. The memory is locked (`mlock`) so the kernel can DMA into it without faulting and it is
//! never swapped out between the read and the compute; the reader registers each slot with
//! io_uring as a fixed buffer.
//!
//! Locking is an optimisation, not a requirement: an unprivileged user's `RLIMIT_MEMLOCK` is
//! 8 MiB by default, far below a useful ring, and refusing to stream would leave such a user
//! with nothing. So when `mlock` is refused for lack of limit the ring stays unlocked (still
//! aligned, so `O_DIRECT` works the same) and [`PoolMemory::lock_failure`] says why, for the
//! reader to turn into one warning.
//!
//! A slot is in exactly one of three states, and the type system keeps them apart:
//! - free: its index is in the pool's free list;
//! - reading: the reader popped it for a request and holds only its index until the request
//!   completes (no Rust reference to its bytes exists, the kernel writes them);
//! - loaded: a [`LoadedSlot`] owns it and hands out `&[u8]`; dropping the handle pushes the
//!   index back onto the free list.
//!
//! So a read in flight and the compute can never alias the same bytes.
use std::ops::{Deref, Range};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::StreamError;

/// The memory behind a ring: one aligned, locked allocation shared (through `Arc`) by the
/// reader and every loaded handle, so it is freed only when the last of them is gone.
pub(crate) struct PoolMemory {
    ptr: NonNull<u8>,
    /// The anonymous map holding the slots (`ptr` is its first `align`ed byte).
    map_base: NonNull<u8>,
    map_len: usize,
    slot_size: usize,
    n_slots: usize,
    locked: bool,
    /// Why the ring is not locked (`None` when it is).
    lock_failure: Option<LockFailure>,
    free: Mutex<Vec<usize>>,
}

/// Why `mlock` refused the ring, kept so the reader can explain what streaming unlocked costs.
#[derive(Debug)]
pub(crate) struct LockFailure {
    /// Ring size in bytes.
    pub(crate) bytes: u64,
    /// The soft `RLIMIT_MEMLOCK` at the time (`None` = unlimited or unknown).
    pub(crate) limit: Option<u64>,
    /// What `mlock` said.
    pub(crate) error: std::io::Error,
}

/// Whether an `mlock` error means "not allowed to lock this much" (the limit, or no privilege
/// at all) rather than a bad call: those are the errors an unlocked ring works around.
fn is_limit_error(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EPERM | libc::ENOMEM | libc::EAGAIN)
    )
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
    /// Allocates and locks `n_slots` slots of `slot_size` bytes aligned to `align`. When the
    /// memlock limit (or the lack of privilege) refuses the lock, the ring is returned unlocked
    /// with [`PoolMemory::lock_failure`] set; any other `mlock` error is
    /// [`StreamError::Memlock`].
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
        // An anonymous map rather than the allocator: it is zero without being written, and it
        // can ask for transparent huge pages before anything is touched, so `mlock` populates
        // it with 2 MiB pages (fewer pinned pages for io_uring, fewer TLB misses for the
        // compute reading the weights). Over-allocated by the alignment beyond a page.
        let page = 4096usize;
        let map_len = total
            .checked_add(align.saturating_sub(page))
            .ok_or(StreamError::BadRing("ring size overflows"))?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(StreamError::OutOfMemory(total as u64));
        }
        let map_base =
            NonNull::new(raw.cast::<u8>()).ok_or(StreamError::OutOfMemory(total as u64))?;
        let offset = (align - (raw as usize) % align) % align;
        // SAFETY: `offset < align`, and the map is `total + align - page` bytes with a
        // page-aligned start, so `offset + total <= map_len`.
        let ptr = unsafe { map_base.add(offset) };
        // Only a hint: without transparent huge pages the ring works with 4 KiB pages.
        #[cfg(target_os = "linux")]
        // SAFETY: advice on the mapping just created, which nothing else uses yet.
        unsafe {
            libc::madvise(raw, map_len, libc::MADV_HUGEPAGE)
        };
        // SAFETY: `ptr` points at `total` bytes of the map just created and owned here.
        let rc = unsafe { libc::mlock(ptr.as_ptr().cast(), total) };
        let lock_failure = if rc == 0 {
            None
        } else {
            let err = std::io::Error::last_os_error();
            if !is_limit_error(&err) {
                // SAFETY: the mapping created above, not shared with anything.
                unsafe { libc::munmap(raw, map_len) };
                return Err(StreamError::Memlock {
                    bytes: total as u64,
                    limit: memlock_limit(),
                    source: err,
                });
            }
            // Over the limit the kernel refuses before locking anything, but EAGAIN can leave
            // part of the range marked locked: unlock it all so the ring is uniformly unlocked
            // (and counts nothing against the limit).
            // SAFETY: `ptr..ptr + total` lies in the map created above; unlocking is always
            // sound.
            unsafe { libc::munlock(ptr.as_ptr().cast(), total) };
            Some(LockFailure {
                bytes: total as u64,
                limit: memlock_limit(),
                error: err,
            })
        };
        Ok(Arc::new(PoolMemory {
            ptr,
            map_base,
            map_len,
            slot_size,
            n_slots,
            locked: lock_failure.is_none(),
            lock_failure,
            free: Mutex::new((0..n_slots).rev().collect()),
        }))
    }

    pub(crate) fn slot_size(&self) -> usize {
        self.slot_size
    }

    pub(crate) fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Whether the ring is locked in memory.
    pub(crate) fn is_locked(&self) -> bool {
        self.locked
    }

    /// Why the ring could not be locked (`None` when it is locked).
    pub(crate) fn lock_failure(&self) -> Option<&LockFailure> {
        self.lock_failure.as_ref()
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
        let total = self.slot_size * self.n_slots;
        if self.locked {
            // SAFETY: the range was locked in `new`; unlocking it is always sound.
            unsafe { libc::munlock(self.ptr.as_ptr().cast(), total) };
        }
        // SAFETY: the mapping made in `new` with exactly this start and length; the last `Arc`
        // is going away, so no handle or read refers to it (the reader's I/O thread drains its
        // reads before dropping its Arc, and a failed engine leaks the pool instead).
        unsafe { libc::munmap(self.map_base.as_ptr().cast(), self.map_len) };
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
