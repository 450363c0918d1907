//! dllama's quantized block formats.
//!
//! Both blocks hold 32 values behind one IEEE half-precision scale, exactly as dllama lays them
//! out in model files, on the wire and in memory (`NnBlockQ40`, `NnBlockQ80` in
//! `nn-quants.hpp`). They are plain old data with alignment 1, so a block slice can be viewed at
//! any byte offset of a file or packet without copying.
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Values per quantized block (dllama's `Q40_BLOCK_SIZE` and `Q80_BLOCK_SIZE`).
pub const BLOCK_SIZE: usize = 32;

/// 32 four-bit weights: value `j` is `(low nibble of qs[j] - 8) * d` for `j < 16` and
/// `(high nibble of qs[j-16] - 8) * d` for `j >= 16`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Q40Block {
    /// The scale, as raw IEEE binary16 bits.
    pub d: [u8; 2],
    /// The 32 codes, two per byte.
    pub qs: [u8; 16],
}

/// 32 eight-bit activations: value `j` is `qs[j] * d`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Q80Block {
    /// The scale, as raw IEEE binary16 bits.
    pub d: [u8; 2],
    /// The 32 signed codes.
    pub qs: [i8; 32],
}

/// Eight weight rows' [`Q40Block`]s of one block column, interleaved (the executor's resident
/// layout for Q40 matmuls, see [`crate::packed`]): the same 144 bytes as eight `Q40Block`s,
/// arranged so that one 256-bit register holds four code bytes of each of the eight rows and
/// one 128-bit load holds their eight scales. A SIMD kernel then gets each row's block sum in
/// its own lane with no horizontal reduction, while every row still sees its blocks in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Q40x8Block {
    /// Row `r`'s scale (raw binary16 bits) at `d[r]`.
    pub d: [[u8; 2]; 8],
    /// `qs[t][4 * r..4 * r + 4]` is row `r`'s `qs[4 * t..4 * t + 4]`: low nibbles are values
    /// `4t..4t + 4` of the row's block, high nibbles values `16 + 4t..16 + 4t + 4`.
    pub qs: [[u8; 32]; 4],
}

const _: () = assert!(core::mem::size_of::<Q40x8Block>() == 8 * 18);
const _: () = assert!(core::mem::align_of::<Q40x8Block>() == 1);
const _: () = assert!(core::mem::size_of::<Q40Block>() == 18);
const _: () = assert!(core::mem::align_of::<Q40Block>() == 1);
const _: () = assert!(core::mem::size_of::<Q80Block>() == 34);
const _: () = assert!(core::mem::align_of::<Q80Block>() == 1);

impl Q40Block {
    /// The scale as an `f16`.
    #[inline]
    pub fn scale(&self) -> f16 {
        f16::from_le_bytes(self.d)
    }
}

impl Q80Block {
    /// The scale as an `f16`.
    #[inline]
    pub fn scale(&self) -> f16 {
        f16::from_le_bytes(self.d)
    }
}

/// dllama's `NnFloatType`: how a tensor, buffer or pipe stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum FloatType {
    /// 32-bit IEEE floats (`F_32` = 0).
    F32 = 0,
    /// 16-bit IEEE floats (`F_16` = 1).
    F16 = 1,
    /// [`Q40Block`]s (`F_Q40` = 2).
    Q40 = 2,
    /// [`Q80Block`]s (`F_Q80` = 3).
    Q80 = 3,
}

impl FloatType {
    /// Decodes dllama's integer code.
    pub const fn from_code(code: u32) -> Option<FloatType> {
        match code {
            0 => Some(FloatType::F32),
            1 => Some(FloatType::F16),
            2 => Some(FloatType::Q40),
            3 => Some(FloatType::Q80),
            _ => None,
        }
    }

    /// The integer code dllama uses.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Bytes needed for `n` values, or `None` when `n` is not a whole number of blocks for a
    /// quantized type or the size overflows.
    pub const fn bytes_for(self, n: u64) -> Option<u64> {
        match self {
            FloatType::F32 => n.checked_mul(4),
            FloatType::F16 => n.checked_mul(2),
            FloatType::Q40 | FloatType::Q80 => {
                if !n.is_multiple_of(BLOCK_SIZE as u64) {
                    return None;
                }
                let per = if matches!(self, FloatType::Q40) {
                    18
                } else {
                    34
                };
                (n / BLOCK_SIZE as u64).checked_mul(per)
            }
        }
    }

    /// The name dllama prints (`f32`, `f16`, `q40`, `q80`).
    pub const fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::F16 => "f16",
            FloatType::Q40 => "q40",
            FloatType::Q80 => "q80",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(FloatType::Q40.bytes_for(64), Some(36));
        assert_eq!(FloatType::Q80.bytes_for(64), Some(68));
        assert_eq!(FloatType::Q80.bytes_for(33), None);
        assert_eq!(FloatType::F32.bytes_for(3), Some(12));
        assert_eq!(FloatType::from_code(4), None);
    }
}
