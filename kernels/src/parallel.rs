//! How dllama splits an op's work between threads, and the small `unsafe` core that lets the
//! threads of one op write disjoint parts of the same buffer.
//!
//! Kernels in this crate work on the slice they are given; the executor cuts each op's range with
//! [`split_range`] exactly as dllama's `SPLIT_THREADS` macro does, so that SIMD loops and their
//! scalar tails start and end where dllama's do, which decides the bits of every tail element.
//!
//! # Sharing a buffer between the threads of one op
//!
//! dllama runs every op on all threads at once; thread `i` writes its own columns of every batch
//! row (or its own batch rows) of the output. Rust cannot express "n threads each hold `&mut` to a
//! different, interleaved part of one slice" without `unsafe`, so this module provides it once:
//!
//! - [`SplitMut`] takes the buffer by `&mut` (so nothing else can read or write it while the op
//!   runs) together with a fixed geometry ([`Split`]) chosen when it is created.
//! - Each thread calls [`SplitMut::claim`] with its index and gets a [`Part`]: the elements the
//!   geometry assigns to that index. An index can be claimed only once per `SplitMut` (an atomic
//!   bit per index), and the parts of different indexes never overlap (they are cut by
//!   [`split_range`] or by row residue), so no two live `&mut` ever alias.
//! - With `std`, [`ThreadPool`] runs one closure on `n` persistent threads (the caller's thread is
//!   index 0) and returns when all are done: the barrier between ops.
use core::marker::PhantomData;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

/// The part `[start, end)` of `0..len` that thread `index` of `n_threads` works on: the first
/// `len % n_threads` threads take one extra element (dllama's `SPLIT_THREADS`).
///
/// `n_threads` must be at least 1 and `index < n_threads`; otherwise the range is empty.
#[inline]
pub const fn split_range(len: usize, n_threads: usize, index: usize) -> Range<usize> {
    if n_threads == 0 || index >= n_threads {
        return 0..0;
    }
    let slice = len / n_threads;
    let rest = len % n_threads;
    let start = index * slice + if index < rest { index } else { rest };
    let end = start + slice + if index < rest { 1 } else { 0 };
    start..end
}

/// Most threads a [`SplitMut`] (and so an executor) supports.
pub const MAX_THREADS: usize = 256;

/// How a [`SplitMut`] assigns its elements to threads. The buffer is seen as `rows` rows that
/// start `stride` elements apart; in each row only the window `offset..offset + len` is shared
/// out (a node's slice of a pipe row, say). Elements outside the windows belong to nobody.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Thread `i` owns, in every row's window, the elements
    /// `unit * split_range(len / unit, n, i)`: dllama's per-row `SPLIT_THREADS` over
    /// `len / unit` items of `unit` elements (e.g. a Q80 block, a RoPE pair, a head).
    Columns {
        /// Elements from one row's start to the next.
        stride: usize,
        /// Rows.
        rows: usize,
        /// Start of the window within a row.
        offset: usize,
        /// Elements of the window.
        len: usize,
        /// Elements per split item; `len` must be a multiple of it.
        unit: usize,
    },
    /// Thread `i` owns the whole windows of rows `i, i + n, i + 2n, …` (dllama's
    /// `for (y = threadIndex; y < batchSize; y += nThreads)`).
    Rows {
        /// Elements from one row's start to the next.
        stride: usize,
        /// Rows.
        rows: usize,
        /// Start of the window within a row.
        offset: usize,
        /// Elements of the window.
        len: usize,
    },
}

impl Split {
    /// Contiguous rows of `row_len` elements split by columns in items of `unit`.
    pub const fn columns(row_len: usize, rows: usize, unit: usize) -> Split {
        Split::Columns {
            stride: row_len,
            rows,
            offset: 0,
            len: row_len,
            unit,
        }
    }

    /// Contiguous rows of `row_len` elements split by rows.
    pub const fn rows(row_len: usize, rows: usize) -> Split {
        Split::Rows {
            stride: row_len,
            rows,
            offset: 0,
            len: row_len,
        }
    }

    fn window(&self) -> (usize, usize, usize, usize) {
        match *self {
            Split::Columns {
                stride,
                rows,
                offset,
                len,
                ..
            }
            | Split::Rows {
                stride,
                rows,
                offset,
                len,
            } => (stride, rows, offset, len),
        }
    }
}

/// Why a [`SplitMut`] could not be made or a part could not be claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// `rows * row_len` does not fit in the buffer, or a size is zero where it must not be.
    Geometry,
    /// `n_threads` is 0 or more than [`MAX_THREADS`].
    Threads,
    /// The thread index is not below `n_threads`.
    Index,
    /// This index was already claimed from this `SplitMut`.
    AlreadyClaimed,
}

impl core::fmt::Display for SplitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SplitError::Geometry => "the split geometry does not fit the buffer",
            SplitError::Threads => "the thread count is 0 or above the limit",
            SplitError::Index => "the thread index is out of range",
            SplitError::AlreadyClaimed => "this thread's part was already claimed",
        })
    }
}

/// A mutable buffer shared by the threads of one op; each thread claims its own part once.
///
/// Created from `&'a mut [T]`, so for `'a` nobody outside the parts can touch the buffer.
#[derive(Debug)]
pub struct SplitMut<'a, T> {
    ptr: NonNull<T>,
    split: Split,
    n_threads: usize,
    claimed: [AtomicU64; MAX_THREADS / 64],
    _buffer: PhantomData<&'a mut [T]>,
}

// SAFETY: a `SplitMut` only hands out non-overlapping `&mut` parts (one claim per index, disjoint
// geometry), each to whoever claims it; sharing it between threads is sharing `&mut [T]` pieces,
// which is sound when `T: Send`.
unsafe impl<T: Send> Sync for SplitMut<'_, T> {}
// SAFETY: it owns a unique borrow of the buffer, like `&mut [T]`, which is `Send` for `T: Send`.
unsafe impl<T: Send> Send for SplitMut<'_, T> {}

impl<'a, T> SplitMut<'a, T> {
    /// Shares `buffer` between `n_threads` threads with the geometry `split`.
    pub fn new(buffer: &'a mut [T], split: Split, n_threads: usize) -> Result<Self, SplitError> {
        if n_threads == 0 || n_threads > MAX_THREADS {
            return Err(SplitError::Threads);
        }
        if let Split::Columns { len, unit, .. } = split
            && (unit == 0 || !len.is_multiple_of(unit))
        {
            return Err(SplitError::Geometry);
        }
        let (stride, rows, offset, len) = split.window();
        let window_end = offset.checked_add(len).ok_or(SplitError::Geometry)?;
        if window_end > stride && rows > 1 {
            return Err(SplitError::Geometry);
        }
        if rows > 0 {
            let last = (rows - 1)
                .checked_mul(stride)
                .and_then(|s| s.checked_add(window_end));
            match last {
                Some(end) if end <= buffer.len() => {}
                _ => return Err(SplitError::Geometry),
            }
        }
        Ok(SplitMut {
            ptr: NonNull::from(buffer).cast(),
            split,
            n_threads,
            claimed: [const { AtomicU64::new(0) }; MAX_THREADS / 64],
            _buffer: PhantomData,
        })
    }

    /// The geometry.
    pub fn split(&self) -> Split {
        self.split
    }

    /// The part of thread `index`. Fails if the index is out of range or was claimed before.
    pub fn claim(&self, index: usize) -> Result<Part<'_, T>, SplitError> {
        if index >= self.n_threads {
            return Err(SplitError::Index);
        }
        let bit = 1u64 << (index % 64);
        let before = self.claimed[index / 64].fetch_or(bit, Ordering::AcqRel);
        if before & bit != 0 {
            return Err(SplitError::AlreadyClaimed);
        }
        let (stride, rows, offset, len) = self.split.window();
        let (columns, first_row, row_step) = match self.split {
            Split::Columns { unit, .. } => {
                let r = split_range(len / unit, self.n_threads, index);
                (offset + r.start * unit..offset + r.end * unit, 0, 1)
            }
            Split::Rows { .. } => (offset..offset + len, index, self.n_threads),
        };
        Ok(Part {
            ptr: self.ptr,
            columns,
            stride,
            rows,
            first_row,
            row_step,
            _split: PhantomData,
        })
    }
}

/// One thread's part of a [`SplitMut`]: some columns of some rows, reachable one row at a time.
#[derive(Debug)]
pub struct Part<'s, T> {
    ptr: NonNull<T>,
    columns: Range<usize>,
    stride: usize,
    rows: usize,
    first_row: usize,
    row_step: usize,
    _split: PhantomData<&'s mut [T]>,
}

// SAFETY: a part is a set of `&mut` sub-slices nobody else can reach; sending it is like sending
// `&mut [T]`.
unsafe impl<T: Send> Send for Part<'_, T> {}

impl<T> Part<'_, T> {
    /// The elements of a row this part owns (relative to the row's start, so they include the
    /// window's offset).
    pub fn columns(&self) -> Range<usize> {
        self.columns.clone()
    }

    /// True when this part owns row `row` (its columns of it).
    pub fn owns_row(&self, row: usize) -> bool {
        row < self.rows
            && row >= self.first_row
            && (row - self.first_row).is_multiple_of(self.row_step)
    }

    /// The rows this part owns, in order.
    pub fn rows(&self) -> impl Iterator<Item = usize> + use<T> {
        (self.first_row..self.rows).step_by(self.row_step)
    }

    /// This part's columns of row `row`, or `None` when the part does not own the row.
    pub fn row_mut(&mut self, row: usize) -> Option<&mut [T]> {
        if !self.owns_row(row) {
            return None;
        }
        let start = row * self.stride + self.columns.start;
        let len = self.columns.end - self.columns.start;
        // SAFETY: `SplitMut::new` checked `(rows - 1) * stride + offset + len <= buffer.len()`
        // and `row < rows`, `columns` lies inside `offset..offset + len`, so the range is inside
        // the buffer borrowed for `'s`. Parts of
        // different indexes own disjoint (row, column) sets and each index is claimed once, and
        // `&mut self` keeps this part from handing out two rows at a time, so the slice aliases
        // nothing else alive.
        Some(unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), len) })
    }
}

impl<'p, T> Part<'p, T> {
    /// All rows this part owns below `limit` at once, in order, as `(row, its columns)`
    /// (a matmul needs the rows of every batch item together).
    pub fn rows_mut(&mut self, limit: usize) -> RowsMut<'_, T> {
        RowsMut {
            ptr: self.ptr,
            columns: self.columns.clone(),
            stride: self.stride,
            next: self.first_row,
            end: limit.min(self.rows),
            step: self.row_step,
            _part: PhantomData,
        }
    }
}

/// Iterator over the rows of a [`Part`], see [`Part::rows_mut`].
#[derive(Debug)]
pub struct RowsMut<'r, T> {
    ptr: NonNull<T>,
    columns: Range<usize>,
    stride: usize,
    next: usize,
    end: usize,
    step: usize,
    _part: PhantomData<&'r mut [T]>,
}

impl<'r, T> Iterator for RowsMut<'r, T> {
    type Item = (usize, &'r mut [T]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let row = self.next;
        self.next += self.step;
        let start = row * self.stride + self.columns.start;
        let len = self.columns.end - self.columns.start;
        // SAFETY: as in `Part::row_mut` the range is inside the buffer (row < rows); the iterator
        // borrows the part mutably for `'r` and yields each owned row at most once (rows strictly
        // increase), so the slices it hands out are disjoint from each other and from everything
        // else alive.
        Some((row, unsafe {
            core::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), len)
        }))
    }
}

#[cfg(feature = "std")]
pub use pool::{PoolError, ThreadPool};

#[cfg(feature = "std")]
mod pool {
    use std::string::String;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::vec::Vec;

    /// The job of one [`ThreadPool::run`]: a borrowed closure with its lifetime erased. It is only
    /// dereferenced between publication and the completion count reaching zero, while `run`
    /// (which holds the real borrow) is still waiting.
    #[derive(Clone, Copy)]
    struct Job(*const (dyn Fn(usize) + Sync + 'static));

    // SAFETY: the pointee is `Sync` (it is called from several threads by `&`), and the pointer
    // is only used while `run` keeps the closure alive (see `Job`).
    unsafe impl Send for Job {}

    struct State {
        generation: u64,
        job: Option<Job>,
        shutdown: bool,
        /// Workers asleep on `wake`, and whether the caller is asleep on `done`: a wake-up is a
        /// `futex` system call, so it is made only when someone sleeps (both are read and
        /// written under this lock, so no wake-up is lost).
        sleepers: usize,
        caller_asleep: bool,
    }

    struct Shared {
        state: Mutex<State>,
        wake: Condvar,
        done: Condvar,
        remaining: AtomicUsize,
        panicked: AtomicBool,
        /// Mirrors `state.generation` for the lock-free spin before sleeping.
        generation: AtomicUsize,
    }

    /// A worker thread of the pool panicked while running a job.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct PoolError(pub String);

    impl core::fmt::Display for PoolError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for PoolError {}

    /// `n` persistent threads (the caller of [`ThreadPool::run`] is thread 0, plus `n - 1`
    /// spawned ones) that run one closure at a time; `run` returns when every thread finished it,
    /// which is the barrier dllama places after every op.
    pub struct ThreadPool {
        n_threads: usize,
        shared: Arc<Shared>,
        handles: Vec<JoinHandle<()>>,
    }

    impl core::fmt::Debug for ThreadPool {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("ThreadPool")
                .field("n_threads", &self.n_threads)
                .finish()
        }
    }

    /// Spins this many times on the generation counter before sleeping: a worker woken for the
    /// next op usually finds it published within microseconds.
    const SPINS: u32 = 20_000;

    impl ThreadPool {
        /// Starts `n_threads - 1` threads (`n_threads` is clamped to `1..=MAX_THREADS`).
        pub fn new(n_threads: usize) -> std::io::Result<ThreadPool> {
            let n_threads = n_threads.clamp(1, super::MAX_THREADS);
            let shared = Arc::new(Shared {
                state: Mutex::new(State {
                    generation: 0,
                    job: None,
                    shutdown: false,
                    sleepers: 0,
                    caller_asleep: false,
                }),
                wake: Condvar::new(),
                done: Condvar::new(),
                remaining: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
                generation: AtomicUsize::new(0),
            });
            let mut pool = ThreadPool {
                n_threads,
                shared,
                handles: Vec::new(),
            };
            for index in 1..n_threads {
                let shared = Arc::clone(&pool.shared);
                let handle = std::thread::Builder::new()
                    .name(std::format!("airllama-{index}"))
                    .spawn(move || worker_loop(&shared, index))?;
                pool.handles.push(handle);
            }
            Ok(pool)
        }

        /// Threads in the pool, the caller's included.
        pub fn n_threads(&self) -> usize {
            self.n_threads
        }

        /// Runs `job(index)` on every thread (`index` 0 on the caller's) and returns when all
        /// have finished. A panic in any thread is reported as an error after all finished.
        pub fn run<F: Fn(usize) + Sync>(&mut self, job: &F) -> Result<(), PoolError> {
            if self.n_threads == 1 {
                return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)))
                    .map_err(|_| PoolError(String::from("the executor thread panicked")));
            }
            let short: &(dyn Fn(usize) + Sync) = job;
            // SAFETY: only the lifetime is erased. The pointer is published to the workers and
            // dereferenced by them until each decrements `remaining`; this function does not
            // return (not even by unwinding: `WaitGuard` waits in its `Drop`) before `remaining`
            // is zero, so `job` outlives every use.
            let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe {
                core::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(
                    short,
                )
            };
            self.shared.panicked.store(false, Ordering::Relaxed);
            self.shared
                .remaining
                .store(self.n_threads - 1, Ordering::Release);
            let sleepers = {
                let mut state = lock(&self.shared.state);
                state.generation += 1;
                state.job = Some(Job(erased));
                self.shared
                    .generation
                    .store(state.generation as usize, Ordering::Release);
                state.sleepers
            };
            if sleepers > 0 {
                self.shared.wake.notify_all();
            }
            let guard = WaitGuard(&self.shared);
            let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
            drop(guard);
            if own.is_err() || self.shared.panicked.load(Ordering::Acquire) {
                return Err(PoolError(String::from("an executor thread panicked")));
            }
            Ok(())
        }
    }

    /// Waits for every worker to finish the current job, also when the caller unwinds.
    struct WaitGuard<'a>(&'a Shared);

    impl Drop for WaitGuard<'_> {
        fn drop(&mut self) {
            let shared = self.0;
            for _ in 0..SPINS {
                if shared.remaining.load(Ordering::Acquire) == 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            let mut state = lock(&shared.state);
            while shared.remaining.load(Ordering::Acquire) != 0 {
                state.caller_asleep = true;
                state = shared.done.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            state.caller_asleep = false;
            state.job = None;
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn worker_loop(shared: &Shared, index: usize) {
        let mut seen: u64 = 0;
        loop {
            for _ in 0..SPINS {
                if shared.generation.load(Ordering::Acquire) as u64 != seen {
                    break;
                }
                core::hint::spin_loop();
            }
            let job = {
                let mut state = lock(&shared.state);
                while state.generation == seen && !state.shutdown {
                    state.sleepers += 1;
                    state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                    state.sleepers -= 1;
                }
                if state.shutdown {
                    return;
                }
                seen = state.generation;
                state.job
            };
            if let Some(Job(ptr)) = job {
                // SAFETY: `run` published this pointer for generation `seen` and keeps the
                // closure alive until `remaining` (decremented below, after the call) is zero.
                let f = unsafe { &*ptr };
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index))).is_err() {
                    shared.panicked.store(true, Ordering::Release);
                }
            }
            if shared.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                let state = lock(&shared.state);
                if state.caller_asleep {
                    shared.done.notify_all();
                }
            }
        }
    }

    impl Drop for ThreadPool {
        fn drop(&mut self) {
            lock(&self.shared.state).shutdown = true;
            self.shared.wake.notify_all();
            for h in self.handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_everything_once() {
        for len in 0..40 {
            for n in 1..7 {
                let mut next = 0;
                for i in 0..n {
                    let r = split_range(len, n, i);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(split_range(10, 3, 0), 0..4);
        assert_eq!(split_range(10, 3, 2), 7..10);
        assert_eq!(split_range(10, 0, 0), 0..0);
    }

    #[test]
    fn parts_cover_the_buffer_once() {
        for n in 1..6 {
            for split in [Split::columns(12, 3, 2), Split::rows(12, 5)] {
                let mut buf = [0u32; 70];
                let s = SplitMut::new(&mut buf, split, n).unwrap();
                for i in 0..n {
                    let mut p = s.claim(i).unwrap();
                    for r in 0..6 {
                        if let Some(row) = p.row_mut(r) {
                            row.iter_mut().for_each(|v| *v += 1);
                        }
                    }
                    assert_eq!(s.claim(i).err(), Some(SplitError::AlreadyClaimed));
                }
                assert_eq!(s.claim(n).err(), Some(SplitError::Index));
                let (stride, rows, _, _) = split.window();
                let used = stride * rows;
                assert!(buf[..used].iter().all(|&v| v == 1));
                assert!(buf[used..].iter().all(|&v| v == 0));
            }
        }
    }

    #[test]
    fn rows_mut_yields_each_owned_row_once() {
        let mut buf = [0u16; 24];
        let mut rows = [0usize; 3];
        let mut n = 0;
        {
            let s = SplitMut::new(&mut buf, Split::rows(4, 6), 2).unwrap();
            let mut p = s.claim(1).unwrap();
            for (r, row) in p.rows_mut(5) {
                row.fill(7);
                rows[n] = r;
                n += 1;
            }
        }
        assert_eq!(&rows[..n], &[1, 3]);
        assert_eq!(&buf[4..8], &[7; 4]);
        assert_eq!(&buf[20..24], &[0; 4]);
    }

    #[test]
    fn windows_leave_the_rest_alone() {
        let mut buf = [0u8; 20];
        let split = Split::Columns {
            stride: 6,
            rows: 3,
            offset: 2,
            len: 4,
            unit: 2,
        };
        let s = SplitMut::new(&mut buf[..18], split, 2).unwrap();
        for i in 0..2 {
            let mut p = s.claim(i).unwrap();
            assert_eq!(p.columns(), 2 + 2 * i..4 + 2 * i);
            for r in 0..3 {
                p.row_mut(r).unwrap().fill(i as u8 + 1);
            }
        }
        assert_eq!(
            &buf[..16],
            &[0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2, 0, 0, 1, 1]
        );
    }

    #[test]
    fn rejects_bad_geometry() {
        let mut buf = [0u8; 10];
        assert_eq!(
            SplitMut::new(&mut buf, Split::rows(4, 3), 1).err(),
            Some(SplitError::Geometry)
        );
        assert_eq!(
            SplitMut::new(&mut buf, Split::columns(5, 2, 2), 1).err(),
            Some(SplitError::Geometry)
        );
        assert_eq!(
            SplitMut::new(&mut buf, Split::rows(1, 1), 0).err(),
            Some(SplitError::Threads)
        );
        let window = Split::Columns {
            stride: 4,
            rows: 2,
            offset: 2,
            len: 4,
            unit: 1,
        };
        assert_eq!(
            SplitMut::new(&mut buf, window, 1).err(),
            Some(SplitError::Geometry)
        );
    }

    #[cfg(feature = "std")]
    #[test]
    fn pool_runs_every_index_and_reuses_threads() {
        use core::sync::atomic::AtomicUsize;
        let mut pool = ThreadPool::new(3).unwrap();
        for round in 0..200 {
            let mut buf = [0usize; 30];
            {
                let split = SplitMut::new(&mut buf, Split::columns(10, 3, 1), 3).unwrap();
                let hits = AtomicUsize::new(0);
                pool.run(&|i| {
                    let mut part = split.claim(i).unwrap();
                    for r in 0..3 {
                        for v in part.row_mut(r).unwrap() {
                            *v = round + i;
                        }
                    }
                    hits.fetch_add(1, Ordering::Relaxed);
                })
                .unwrap();
                assert_eq!(hits.load(Ordering::Relaxed), 3);
            }
            assert_eq!(buf[0], round);
            assert_eq!(buf[9], round + 2);
        }
        assert!(pool.run(&|i| assert!(i != 2)).is_err());
        pool.run(&|_| {}).unwrap();
    }

    #[cfg(feature = "std")]
    #[test]
    fn a_panic_on_the_calling_thread_still_waits_for_the_others() {
        use core::sync::atomic::AtomicUsize;
        let mut pool = ThreadPool::new(3).unwrap();
        let finished = AtomicUsize::new(0);
        let result = pool.run(&|i| {
            if i == 0 {
                panic!("thread 0 fails");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            finished.fetch_add(1, Ordering::SeqCst);
        });
        assert!(result.is_err());
        // `run` returned only after both workers were done with the borrowed closure.
        assert_eq!(finished.load(Ordering::SeqCst), 2);
        pool.run(&|_| {}).unwrap();
    }

    /// Every mix of who sleeps: workers that fell asleep between jobs (a pause longer than
    /// their spin), a caller that falls asleep waiting for a slow worker, and back-to-back jobs
    /// where nobody sleeps. A lost wake-up would hang here; every job must run on every index.
    #[cfg(feature = "std")]
    #[test]
    fn sleeping_workers_and_a_sleeping_caller_are_always_woken() {
        use core::sync::atomic::AtomicUsize;
        use std::time::Duration;
        for threads in [2, 3] {
            let mut pool = ThreadPool::new(threads).unwrap();
            let hits = AtomicUsize::new(0);
            for round in 0..300usize {
                let slow = round % 7;
                pool.run(&|i| {
                    if i == slow % threads && round % 3 == 0 {
                        std::thread::sleep(Duration::from_micros(300 + 50 * slow as u64));
                    }
                    hits.fetch_add(1, Ordering::Relaxed);
                })
                .unwrap();
                if round % 10 == 0 {
                    // Long enough for every worker to give up spinning and sleep.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            assert_eq!(hits.load(Ordering::Relaxed), 300 * threads);
        }
    }
}
