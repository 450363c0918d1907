//! Instruction-set selection.
//!
//! A [`Backend`] can only be obtained for an instruction set the running CPU supports, so holding
//! one is the proof every `unsafe` `#[target_feature]` call in this crate relies on. With the
//! `std` feature the CPU is probed at run time ([`Backend::detect`]); without it, only the
//! features the crate was compiled for (`-C target-feature`) count.
//!
//! The instruction sets mirror the dllama builds whose numerics they reproduce:
//!
//! | [`Isa`]              | dllama build it matches                                   |
//! |----------------------|-----------------------------------------------------------|
//! | `Scalar`             | none exactly: the portable reference (no fused multiply-add) |
//! | `Avx2`               | `-O3 -mavx2 -mfma -mf16c` (x86-64)                        |
//! | `Avx512`             | `-O3 -march=native` on a CPU with AVX-512 F/BW/DQ/VL       |
//! | `Neon`               | aarch64 `-march=armv8-a` (Raspberry Pi 4 class)            |
//! | `NeonDotprod`        | aarch64 `-march=armv8.2-a+dotprod+fp16` (Raspberry Pi 5 class) |

/// An instruction set a kernel path is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, no SIMD intrinsics and no fused multiply-add.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/DQ/VL on top of AVX2 + FMA + F16C.
    Avx512,
    /// aarch64 Advanced SIMD without the dot-product extension.
    Neon,
    /// aarch64 Advanced SIMD with SDOT/UDOT (and FP16 arithmetic, as dllama's build has).
    NeonDotprod,
}

impl Isa {
    /// Every instruction set, from the most portable to the most specific.
    pub const ALL: [Isa; 5] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Neon,
        Isa::NeonDotprod,
    ];

    /// The lower-case name used by `AIRLLAMA_ISA` and in logs.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "neon-dotprod",
        }
    }

    /// Parses a name as printed by [`Isa::name`].
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.name() == name)
    }
}

impl core::fmt::Display for Isa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Proof that the running CPU supports an [`Isa`]. Cheap to copy; pass it to every kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    isa: Isa,
}

impl Backend {
    /// The portable reference backend, available everywhere.
    pub const fn scalar() -> Backend {
        Backend { isa: Isa::Scalar }
    }

    /// The instruction set this backend runs.
    pub const fn isa(self) -> Isa {
        self.isa
    }

    /// A backend for `isa` if the CPU supports it, else `None`.
    pub fn new(isa: Isa) -> Option<Backend> {
        if is_supported(isa) {
            Some(Backend { isa })
        } else {
            None
        }
    }

    /// The best backend of this CPU, limited by the environment variable `AIRLLAMA_ISA`
    /// (`scalar`, `avx2`, `avx512`, `neon`, `neon-dotprod`) when it is set: the result is the best
    /// supported instruction set that is not more specific than the one named. This is how a
    /// worker on an AVX-512 machine reproduces the bytes of an AVX2-only dllama build.
    #[cfg(feature = "std")]
    pub fn detect() -> Backend {
        let limit = std::env::var("AIRLLAMA_ISA")
            .ok()
            .and_then(|v| Isa::from_name(v.trim()));
        Backend::best(limit)
    }

    /// The best supported backend not more specific than `limit` (no limit: the best there is).
    pub fn best(limit: Option<Isa>) -> Backend {
        let order: &[Isa] = if cfg!(target_arch = "x86_64") {
            &[Isa::Avx512, Isa::Avx2]
        } else if cfg!(target_arch = "aarch64") {
            &[Isa::NeonDotprod, Isa::Neon]
        } else {
            &[]
        };
        order
            .iter()
            .copied()
            .filter(|isa| limit.is_none_or(|l| *isa <= l))
            .find_map(Backend::new)
            .unwrap_or(Backend::scalar())
    }

    /// Every backend this CPU supports, for tests that run each path against the reference.
    pub fn all_supported() -> impl Iterator<Item = Backend> {
        Isa::ALL.into_iter().filter_map(Backend::new)
    }
}

#[cfg(target_arch = "x86_64")]
fn is_supported(isa: Isa) -> bool {
    #[cfg(feature = "std")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c");
        match isa {
            Isa::Scalar => true,
            Isa::Avx2 => avx2,
            Isa::Avx512 => {
                avx2 && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
            }
            Isa::Neon | Isa::NeonDotprod => false,
        }
    }
    #[cfg(not(feature = "std"))]
    {
        let avx2 = cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ));
        match isa {
            Isa::Scalar => true,
            Isa::Avx2 => avx2,
            Isa::Avx512 => {
                avx2 && cfg!(all(
                    target_feature = "avx512f",
                    target_feature = "avx512bw",
                    target_feature = "avx512dq",
                    target_feature = "avx512vl"
                ))
            }
            Isa::Neon | Isa::NeonDotprod => false,
        }
    }
}

#[cfg(target_arch = "aarch64")]
fn is_supported(isa: Isa) -> bool {
    #[cfg(feature = "std")]
    {
        let neon = std::arch::is_aarch64_feature_detected!("neon");
        match isa {
            Isa::Scalar => true,
            Isa::Neon => neon,
            Isa::NeonDotprod => neon && std::arch::is_aarch64_feature_detected!("dotprod"),
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }
    #[cfg(not(feature = "std"))]
    {
        match isa {
            Isa::Scalar => true,
            Isa::Neon => cfg!(target_feature = "neon"),
            Isa::NeonDotprod => cfg!(all(target_feature = "neon", target_feature = "dotprod")),
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn is_supported(isa: Isa) -> bool {
    isa == Isa::Scalar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_is_always_supported() {
        assert_eq!(Backend::new(Isa::Scalar), Some(Backend::scalar()));
        assert!(Backend::all_supported().any(|b| b.isa() == Isa::Scalar));
    }

    #[test]
    fn limit_is_respected() {
        assert_eq!(Backend::best(Some(Isa::Scalar)).isa(), Isa::Scalar);
        let best = Backend::best(None);
        assert!(Backend::new(best.isa()).is_some());
    }

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
    }
}
