//! How dllama splits an op's work between threads.
//!
//! Kernels in this crate work on the slice they are given; the executor cuts each op's range with
//! [`split_range`] exactly as dllama's `SPLIT_THREADS` macro does, so that SIMD loops and their
//! scalar tails start and end where dllama's do, which decides the bits of every tail element.
use core::ops::Range;

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
}
