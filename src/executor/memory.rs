//! Zeroed, 64-byte aligned storage for pipes, buffers and weights, and typed views of it.
//!
//! Every pipe, buffer and op weight of a node config gets one [`Slab`]. A slab is a vector of
//! 64-byte [`Line`]s, so its start is aligned for any element type the kernels use (`f32`,
//! [`Q80Block`], [`Q40Block`]) and SIMD loads see the alignment dllama's `posix_memalign(64)`
//! gives. Typed views go through `bytemuck`, which checks alignment and length instead of
//! trusting them.
use airllama_kernels::block::{BLOCK_SIZE, Q40Block, Q80Block};
use bytemuck::{Pod, Zeroable};

use super::ExecutorError;

/// One cache line of storage.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A zero-initialised byte buffer of exactly `len` bytes, 64-byte aligned.
pub(crate) struct Slab {
    lines: Vec<Line>,
    len: usize,
}

impl std::fmt::Debug for Slab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slab").field("len", &self.len).finish()
    }
}

impl Slab {
    /// Allocates `len` zero bytes; fails (instead of aborting) when the allocator refuses.
    pub(crate) fn zeroed(len: u64, what: &str) -> Result<Slab, ExecutorError> {
        let oom = || ExecutorError::OutOfMemory {
            what: what.to_string(),
            bytes: len,
        };
        let len = usize::try_from(len).map_err(|_| oom())?;
        let n_lines = len.div_ceil(64);
        let mut lines = Vec::new();
        lines.try_reserve_exact(n_lines).map_err(|_| oom())?;
        lines.resize(n_lines, Line([0; 64]));
        Ok(Slab { lines, len })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.lines);
        all.get(..self.len).unwrap_or(&[])
    }

    /// The bytes, mutably.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        let all: &mut [u8] = bytemuck::cast_slice_mut(&mut self.lines);
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
        let mut s = Slab::zeroed(100, "test").unwrap();
        assert_eq!(s.len(), 100);
        assert!(s.bytes().iter().all(|&b| b == 0));
        assert_eq!(s.bytes().as_ptr() as usize % 64, 0);
        s.bytes_mut()[99] = 1;
        assert_eq!(view::<f32>(s.bytes()).unwrap().len(), 25);
        assert!(view::<f32>(&s.bytes()[1..]).is_err());
        assert_eq!(view::<Q80Block>(&s.bytes()[..68]).unwrap().len(), 2);
        assert!(Slab::zeroed(u64::MAX, "huge").is_err());
    }
}
