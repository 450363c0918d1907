//! MOE_GATE: pick the top-k experts of a router row and their weights.
use crate::backend::Backend;

/// Why [`moe_gate`] refused its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeGateError {
    /// `k` is zero or larger than the number of experts.
    BadK { k: usize, n_experts: usize },
    /// A buffer has the wrong length.
    BufferLength(&'static str),
}

impl core::fmt::Display for MoeGateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MoeGateError::BadK { k, n_experts } => {
                write!(f, "moe gate: k = {k} with {n_experts} experts")
            }
            MoeGateError::BufferLength(what) => write!(f, "moe gate: bad {what} length"),
        }
    }
}

/// MOE_GATE for one batch item (dllama `moeGateForward_F32_F32` + `topk_F32`).
///
/// The experts are ordered by descending score exactly as dllama's `std::sort` (libstdc++
/// introsort, see [`sort_desc_indices`]) orders them, ties included; the first `k` are the
/// active experts. With `norm_topk` their weights are `score / Σ score` (sum in rank order),
/// otherwise `score / 1`. `indexes[i]` receives the expert index as `f32` (dllama's indexes
/// buffer row), `weights[i]` the weight (dllama writes it to output row `i · nBatches + y`).
/// Scalar C++ on every ISA: the bits do not depend on the backend.
///
/// Not split: the executor gives thread `t` the batch items `t, t + nThreads, …`.
/// `scratch` must hold `input.len()` values (dllama's temporary `std::vector`).
pub fn moe_gate(
    backend: Backend,
    input: &[f32],
    k: usize,
    norm_topk: bool,
    scratch: &mut [u32],
    indexes: &mut [f32],
    weights: &mut [f32],
) -> Result<(), MoeGateError> {
    let _ = backend;
    let n = input.len();
    if k == 0 || k > n {
        return Err(MoeGateError::BadK { k, n_experts: n });
    }
    if scratch.len() != n {
        return Err(MoeGateError::BufferLength("scratch"));
    }
    if indexes.len() != k {
        return Err(MoeGateError::BufferLength("indexes"));
    }
    if weights.len() != k {
        return Err(MoeGateError::BufferLength("weights"));
    }
    for (i, s) in scratch.iter_mut().enumerate() {
        *s = i as u32;
    }
    sort_desc_indices(input, scratch);
    let top = &scratch[..k];
    let sum = if norm_topk {
        let mut s = 0.0f32;
        for &p in top {
            s += input[p as usize];
        }
        s
    } else {
        1.0
    };
    for ((&p, idx), w) in top.iter().zip(indexes.iter_mut()).zip(weights.iter_mut()) {
        *idx = p as f32;
        *w = input[p as usize] / sum;
    }
    Ok(())
}

/// Sorts `items` (indices into `x`) so that `x[items]` descends, reproducing libstdc++'s
/// `std::sort(items, [&](a, b) { return x[a] > x[b]; })` step for step: introsort with
/// median-of-three pivots and unguarded partitions on ranges above 16 items, heapsort below
/// the depth limit `2·⌊log2 n⌋`, then the final insertion sort. `std::sort` is not stable, so
/// the order of equal scores depends on exactly these steps.
///
/// Where libstdc++ would read outside the range (a NaN score can break the unguarded scans'
/// sentinels, undefined behaviour in C++), the scan stops at the range edge instead.
///
/// # Panics
/// If an item is not a valid index into `x`.
pub fn sort_desc_indices(x: &[f32], items: &mut [u32]) {
    let n = items.len();
    if n == 0 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    let mut s = Sorter { x, v: items };
    s.introsort_loop(0, n, depth);
    s.final_insertion_sort(0, n);
}

/// libstdc++'s `std::partial_sort(items, items + n, items + n, comp)` with the comparator of
/// [`sort_desc_indices`]: the heapsort that introsort falls back to at its depth limit. Exposed
/// so that its order of equal scores can be checked against libstdc++ directly (the fallback is
/// hard to reach through `std::sort` with tied scores).
///
/// # Panics
/// If an item is not a valid index into `x`.
pub fn heap_sort_desc_indices(x: &[f32], items: &mut [u32]) {
    let n = items.len();
    Sorter { x, v: items }.heap_sort(0, n);
}

const THRESHOLD: usize = 16;

struct Sorter<'a> {
    x: &'a [f32],
    v: &'a mut [u32],
}

impl Sorter<'_> {
    /// The comparator: item `a` goes before item `b`.
    #[inline]
    fn before(&self, a: u32, b: u32) -> bool {
        self.x[a as usize] > self.x[b as usize]
    }

    #[inline]
    fn at(&self, i: usize, j: usize) -> bool {
        self.before(self.v[i], self.v[j])
    }

    fn introsort_loop(&mut self, first: usize, mut last: usize, mut depth: usize) {
        while last - first > THRESHOLD {
            if depth == 0 {
                self.heap_sort(first, last);
                return;
            }
            depth -= 1;
            let cut = self.partition_pivot(first, last);
            self.introsort_loop(cut, last, depth);
            last = cut;
        }
    }

    fn partition_pivot(&mut self, first: usize, last: usize) -> usize {
        let mid = first + (last - first) / 2;
        self.move_median_to_first(first, first + 1, mid, last - 1);
        self.unguarded_partition(first + 1, last, first)
    }

    fn move_median_to_first(&mut self, result: usize, a: usize, b: usize, c: usize) {
        let pick = if self.at(a, b) {
            if self.at(b, c) {
                b
            } else if self.at(a, c) {
                c
            } else {
                a
            }
        } else if self.at(a, c) {
            a
        } else if self.at(b, c) {
            c
        } else {
            b
        };
        self.v.swap(result, pick);
    }

    fn unguarded_partition(&mut self, mut first: usize, mut last: usize, pivot: usize) -> usize {
        let lo = first;
        let hi = last;
        loop {
            while first < hi && self.at(first, pivot) {
                first += 1;
            }
            last -= 1;
            // The pivot sits at `lo - 1` and stops this scan in libstdc++.
            while last >= lo && self.at(pivot, last) {
                last -= 1;
            }
            if first >= last {
                return first;
            }
            self.v.swap(first, last);
            first += 1;
        }
    }

    fn final_insertion_sort(&mut self, first: usize, last: usize) {
        if last - first > THRESHOLD {
            self.insertion_sort(first, first + THRESHOLD);
            for i in first + THRESHOLD..last {
                self.unguarded_linear_insert(i, first);
            }
        } else {
            self.insertion_sort(first, last);
        }
    }

    fn insertion_sort(&mut self, first: usize, last: usize) {
        if first == last {
            return;
        }
        for i in first + 1..last {
            if self.at(i, first) {
                let val = self.v[i];
                self.v.copy_within(first..i, first + 1);
                self.v[first] = val;
            } else {
                self.unguarded_linear_insert(i, first);
            }
        }
    }

    /// Moves `v[last]` down while it goes before its left neighbour (`floor` bounds the scan
    /// where libstdc++ relies on a sentinel).
    fn unguarded_linear_insert(&mut self, mut last: usize, floor: usize) {
        let val = self.v[last];
        while last > floor && self.before(val, self.v[last - 1]) {
            self.v[last] = self.v[last - 1];
            last -= 1;
        }
        self.v[last] = val;
    }

    /// `std::__partial_sort(first, last, last)`: make_heap then sort_heap.
    fn heap_sort(&mut self, first: usize, last: usize) {
        let len = last - first;
        if len >= 2 {
            let mut parent = (len - 2) / 2;
            loop {
                let value = self.v[first + parent];
                self.adjust_heap(first, parent, len, value);
                if parent == 0 {
                    break;
                }
                parent -= 1;
            }
        }
        let mut end = last;
        while end - first > 1 {
            end -= 1;
            let value = self.v[end];
            self.v[end] = self.v[first];
            self.adjust_heap(first, 0, end - first, value);
        }
    }

    fn adjust_heap(&mut self, first: usize, mut hole: usize, len: usize, value: u32) {
        let top = hole;
        let mut child = hole;
        while child < (len - 1) / 2 {
            child = 2 * (child + 1);
            if self.at(first + child, first + child - 1) {
                child -= 1;
            }
            self.v[first + hole] = self.v[first + child];
            hole = child;
        }
        if len & 1 == 0 && child == (len - 2) / 2 {
            child = 2 * (child + 1);
            self.v[first + hole] = self.v[first + child - 1];
            hole = child - 1;
        }
        // __push_heap
        let mut parent = hole.wrapping_sub(1) / 2;
        while hole > top && self.before(self.v[first + parent], value) {
            self.v[first + hole] = self.v[first + parent];
            hole = parent;
            parent = hole.wrapping_sub(1) / 2;
        }
        self.v[first + hole] = value;
    }
}
