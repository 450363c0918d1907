//! Zeroed, 64-byte aligned storage for pipes, buffers and weights, and typed views of it.
//!
//! Every pipe, buffer and op weight of a node config gets one [`Slab`]. A slab is a vector of
//! 64-byte [`Line`]s, so its start is aligned for any element type the kernels use (`f32`,
//! [`Q80Block`], [`Q40Block`]) and SIMD loads see the alignment dllama's `posix_memalign(64)`
//! gives. Typed views go through `bytemuck`, which checks alignment and length instead of
//! trusting them.
use airllama_kernels::block::{BLOCK_SIZE, Q40Block, Q40x8Block, Q80Block};
use bytemuck::{Pod, Zeroable};

use super::ExecutorError;

/// One cache line of storage.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Slabs at least this large are anonymous maps asking for transparent huge pages.
///
/// Why: a model's weights are gigabytes of fresh memory. Zeroing a `Vec` touches every 4 KiB
/// page once to write zeros and the load writes it again; under a hypervisor each first touch
/// also faults on the host. An anonymous map is zero without being written, and 2 MiB pages
/// cut the faults (and the decode's TLB misses) 512-fold: loading a 4.2 GB model went from
/// 15.7 s to a few seconds on the development VM.
const MAP_THRESHOLD: usize = 2 << 20;

/// How a large slab's pages are used, which decides the page size to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pages {
    /// Written whole at load and read whole every forward (weights): 2 MiB pages.
    Dense,
    /// Touched a little at a time (KV caches fill one position per token; most of a long
    /// context is never used in a run): 4 KiB pages, so a first touch zeroes 4 KiB, not
    /// 2 MiB. With huge pages, SmolLM2's first prompt forward spent 75 % of its time in the
    /// kernel zeroing the 377 MB KV cache that a 32-token prompt barely uses.
    Sparse,
}

/// Where a slab's bytes live.
enum Storage {
    /// Small slabs: a vector of lines (aligned by the type).
    Lines(Vec<Line>),
    /// Large slabs: an anonymous map (page-aligned, zero-filled by the kernel on first touch).
    Mapped(memmap2::MmapMut),
}

/// A zero-initialised byte buffer of exactly `len` bytes, 64-byte aligned.
pub(crate) struct Slab {
    storage: Storage,
    len: usize,
}

impl std::fmt::Debug for Slab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slab").field("len", &self.len).finish()
    }
}

impl Slab {
    /// Allocates `len` zero bytes; fails (instead of aborting) when the allocator refuses.
    pub(crate) fn zeroed(len: u64, what: &str, pages: Pages) -> Result<Slab, ExecutorError> {
        let oom = || ExecutorError::OutOfMemory {
            what: what.to_string(),
            bytes: len,
        };
        let len = usize::try_from(len).map_err(|_| oom())?;
        if len >= MAP_THRESHOLD {
            let map = memmap2::MmapMut::map_anon(len).map_err(|_| oom())?;
            // Only a hint: without transparent huge pages the map still works with 4 KiB pages.
            #[cfg(target_os = "linux")]
            let _ = map.advise(match pages {
                Pages::Dense => memmap2::Advice::HugePage,
                Pages::Sparse => memmap2::Advice::NoHugePage,
            });
            #[cfg(not(target_os = "linux"))]
            let _ = pages;
            return Ok(Slab {
                storage: Storage::Mapped(map),
                len,
            });
        }
        let n_lines = len.div_ceil(64);
        let mut lines = Vec::new();
        lines.try_reserve_exact(n_lines).map_err(|_| oom())?;
        lines.resize(n_lines, Line([0; 64]));
        Ok(Slab {
            storage: Storage::Lines(lines),
            len,
        })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        let all: &[u8] = match &self.storage {
            Storage::Lines(lines) => bytemuck::cast_slice(lines),
            Storage::Mapped(map) => map,
        };
        all.get(..self.len).unwrap_or(&[])
    }

    /// The bytes, mutably.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        let all: &mut [u8] = match &mut self.storage {
            Storage::Lines(lines) => bytemuck::cast_slice_mut(lines),
            Storage::Mapped(map) => map,
        };
        all.get_mut(..len).unwrap_or(&mut [])
    }
}

/// Element types a slab can be viewed as.
pub(crate) trait Element: Pod {
    /// Name used in errors.
    const NAME: &'static str;
    /// Values one element holds (1 for `f32`, a block's worth for the quantized blocks): what
    /// lines up rows of different element types value for value.
    const VALUES: usize;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    const VALUES: usize = 1;
}
impl Element for Q80Block {
    const NAME: &'static str = "Q80 blocks";
    const VALUES: usize = BLOCK_SIZE;
}
impl Element for Q40Block {
    const NAME: &'static str = "Q40 blocks";
    const VALUES: usize = BLOCK_SIZE;
}

impl Element for Q40x8Block {
    const NAME: &'static str = "interleaved Q40 blocks";
    const VALUES: usize = 8 * BLOCK_SIZE;
}

/// `bytes` as a slice of `T` (whole elements only; a trailing partial element is an error).
pub(crate) fn view<T: Element>(bytes: &[u8]) -> Result<&[T], ExecutorError> {
    bytemuck::try_cast_slice(bytes).map_err(|_| ExecutorError::Layout(T::NAME))
}

/// `bytes` as a mutable slice of `T`.
pub(crate) fn view_mut<T: Element>(bytes: &mut [u8]) -> Result<&mut [T], ExecutorError> {
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| ExecutorError::Layout(T::NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_are_aligned_zeroed_and_exact() {
        let mut s = Slab::zeroed(100, "test", Pages::Dense).unwrap();
        assert_eq!(s.len(), 100);
        assert!(s.bytes().iter().all(|&b| b == 0));
        assert_eq!(s.bytes().as_ptr() as usize % 64, 0);
        s.bytes_mut()[99] = 1;
        assert_eq!(view::<f32>(s.bytes()).unwrap().len(), 25);
        assert!(view::<f32>(&s.bytes()[1..]).is_err());
        assert_eq!(view::<Q80Block>(&s.bytes()[..68]).unwrap().len(), 2);
        assert!(Slab::zeroed(u64::MAX, "huge", Pages::Sparse).is_err());
    }
}
