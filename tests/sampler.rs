//! The sampler against dllama's `Sampler` (tokenizer.cpp).
//!
//! Every expected value below is dllama's output, printed by a small C++ program that links
//! dllama's `tokenizer.cpp` and `nn-cpu-ops.cpp` and feeds them the logits [`logits`] makes:
//! "avx2" columns from a `g++ -O3 -march=native` build (dllama's `__AVX2__` softmax), "generic"
//! columns from a plain `g++ -O3` x86-64 build (its portable softmax), "neon" columns from a
//! static `aarch64-linux-gnu-g++ -O3 -march=armv8-a` build run by `qemu-aarch64 -cpu cortex-a72`
//! (its `__ARM_NEON` softmax; the `-march=armv8.2-a+dotprod+fp16` build under `-cpu cortex-a76`
//! prints the same values, so the column serves both NEON backends).
use airllama::sampler::{Sampler, SamplerError, XorShiftRng};
use airllama_kernels::backend::{Backend, Isa};
use proptest::prelude::*;

/// The harness's logits: integers mapped exactly into `f32`, so both sides get the same bits.
fn logits(vocab: usize, step: u32, spread: i32) -> Vec<f32> {
    (0..vocab as u32)
        .map(|i| {
            let v = i
                .wrapping_mul(7919)
                .wrapping_add(step.wrapping_mul(104_729))
                % 1000;
            (v as i32 - 500) as f32 / spread as f32
        })
        .collect()
}

/// The backends whose dllama aarch64 build (`-march=armv8-a`, run under qemu) produced the
/// "neon" columns: both NEON backends take dllama's `__ARM_NEON` softmax.
fn neon_backends() -> Vec<Backend> {
    [Isa::Neon, Isa::NeonDotprod]
        .into_iter()
        .filter_map(Backend::new)
        .collect()
}

/// The backend whose dllama build produced the "avx2" columns, when this CPU has it.
fn avx2_backend() -> Option<Backend> {
    Backend::new(Isa::Avx512).or_else(|| Backend::new(Isa::Avx2))
}

type SequenceCase = (
    usize,
    f32,
    f32,
    u64,
    u32,
    i32,
    &'static [u32],
    &'static [u32],
    &'static [u32],
);

/// (vocab, temperature, top-p, seed, steps, spread, dllama avx2 ids, dllama generic ids, dllama
/// NEON ids).
const SEQUENCES: &[SequenceCase] = &[
    (
        288,
        0f32,
        0.9f32,
        7u64,
        6,
        100,
        &[284, 256, 265, 274, 283, 8],
        &[284, 256, 265, 274, 283, 8],
        &[284, 256, 265, 274, 283, 8],
    ),
    (
        288,
        0.8f32,
        0.9f32,
        7u64,
        24,
        100,
        &[
            26, 159, 228, 200, 234, 206, 216, 199, 270, 144, 128, 26, 183, 94, 15, 86, 282, 31,
            249, 98, 168, 251, 1, 146,
        ],
        &[
            26, 159, 228, 200, 234, 206, 216, 199, 270, 144, 128, 26, 183, 94, 15, 86, 282, 31,
            249, 98, 168, 251, 1, 146,
        ],
        &[
            26, 159, 228, 200, 234, 206, 216, 199, 270, 144, 128, 26, 183, 94, 15, 86, 282, 31,
            249, 98, 168, 251, 1, 146,
        ],
    ),
    (
        288,
        1.0f32,
        0f32,
        12345u64,
        24,
        100,
        &[
            176, 220, 21, 216, 37, 59, 283, 162, 222, 131, 215, 75, 34, 20, 130, 61, 9, 252, 163,
            12, 242, 204, 186, 195,
        ],
        &[
            176, 220, 21, 216, 37, 59, 283, 162, 222, 131, 215, 75, 34, 20, 130, 61, 9, 252, 163,
            12, 242, 204, 186, 195,
        ],
        &[
            176, 220, 21, 216, 37, 59, 283, 162, 222, 131, 215, 75, 34, 20, 130, 61, 9, 252, 163,
            12, 242, 204, 186, 195,
        ],
    ),
    (
        288,
        0.3f32,
        0.5f32,
        42u64,
        24,
        10,
        &[
            284, 256, 265, 274, 283, 8, 17, 26, 35, 44, 53, 62, 71, 80, 89, 98, 107, 116, 125, 134,
            143, 152, 161, 170,
        ],
        &[
            284, 256, 265, 274, 283, 8, 17, 26, 35, 44, 53, 62, 71, 80, 89, 98, 107, 116, 125, 134,
            143, 152, 161, 170,
        ],
        &[
            284, 256, 265, 274, 283, 8, 17, 26, 35, 44, 53, 62, 71, 80, 89, 98, 107, 116, 125, 134,
            143, 152, 161, 170,
        ],
    ),
    (
        288,
        2.0f32,
        1.0f32,
        3735928559u64,
        24,
        1000,
        &[
            78, 141, 85, 208, 38, 270, 163, 60, 102, 99, 55, 105, 40, 98, 224, 24, 179, 242, 61,
            76, 205, 252, 234, 233,
        ],
        &[
            78, 141, 85, 208, 38, 270, 163, 60, 102, 99, 55, 105, 40, 98, 224, 24, 179, 242, 61,
            76, 205, 252, 234, 233,
        ],
        &[
            78, 141, 85, 208, 38, 270, 163, 60, 102, 99, 55, 105, 40, 98, 224, 24, 179, 242, 61,
            76, 205, 252, 234, 233,
        ],
    ),
    (
        37,
        0.7f32,
        0.95f32,
        1u64,
        24,
        50,
        &[
            25, 22, 31, 15, 24, 33, 5, 14, 35, 32, 16, 25, 34, 31, 28, 12, 33, 5, 14, 36, 32, 4, 1,
            22,
        ],
        &[
            25, 22, 31, 15, 24, 33, 5, 14, 35, 32, 16, 25, 34, 31, 28, 12, 33, 5, 14, 36, 32, 4, 1,
            22,
        ],
        &[
            25, 22, 31, 15, 24, 33, 5, 14, 35, 32, 16, 25, 34, 31, 28, 12, 33, 5, 14, 36, 32, 4, 1,
            22,
        ],
    ),
    (
        37,
        1.0f32,
        0.2f32,
        99u64,
        24,
        100,
        &[
            25, 34, 6, 15, 24, 8, 17, 26, 35, 7, 16, 25, 34, 6, 15, 24, 33, 5, 14, 23, 32, 4, 13,
            22,
        ],
        &[
            25, 34, 6, 15, 24, 8, 17, 26, 35, 7, 16, 25, 34, 6, 15, 24, 33, 5, 14, 23, 32, 4, 13,
            22,
        ],
        &[
            25, 34, 6, 15, 24, 8, 17, 26, 35, 7, 16, 25, 34, 6, 15, 24, 33, 5, 14, 23, 32, 4, 13,
            22,
        ],
    ),
    (
        5,
        0.5f32,
        0.9f32,
        5u64,
        24,
        100,
        &[
            1, 0, 0, 3, 0, 0, 0, 2, 0, 1, 4, 1, 0, 0, 3, 0, 1, 1, 3, 0, 0, 4, 1, 0,
        ],
        &[
            1, 0, 0, 3, 0, 0, 0, 2, 0, 1, 4, 1, 0, 0, 3, 0, 1, 1, 3, 0, 0, 4, 1, 0,
        ],
        &[
            1, 0, 0, 3, 0, 0, 0, 2, 0, 1, 4, 1, 0, 0, 3, 0, 1, 1, 3, 0, 0, 4, 1, 0,
        ],
    ),
    (
        1000,
        0.8f32,
        0.9f32,
        18446744073709551615u64,
        24,
        100,
        &[
            928, 306, 475, 522, 555, 207, 636, 471, 555, 452, 609, 175, 344, 932, 546, 605, 317,
            931, 409, 468, 602, 609, 124, 454,
        ],
        &[
            928, 306, 475, 522, 555, 207, 636, 471, 555, 452, 609, 175, 344, 932, 546, 605, 317,
            931, 409, 468, 602, 609, 124, 454,
        ],
        &[
            928, 306, 475, 522, 555, 207, 636, 471, 555, 452, 609, 175, 23, 932, 546, 605, 317,
            931, 409, 468, 602, 609, 124, 454,
        ],
    ),
    (
        1000,
        1.5f32,
        0.99f32,
        2024u64,
        24,
        1000,
        &[
            197, 343, 69, 29, 935, 159, 968, 320, 587, 586, 588, 721, 195, 839, 178, 919, 418, 988,
            943, 112, 542, 412, 458, 285,
        ],
        &[
            197, 343, 69, 29, 935, 159, 968, 320, 587, 586, 588, 721, 195, 839, 178, 919, 418, 988,
            943, 112, 542, 412, 458, 285,
        ],
        &[
            197, 343, 69, 29, 935, 159, 968, 320, 587, 586, 588, 721, 195, 839, 178, 919, 418, 988,
            943, 112, 542, 412, 458, 285,
        ],
    ),
];

fn run(
    backend: Backend,
    vocab: usize,
    t: f32,
    p: f32,
    seed: u64,
    steps: u32,
    spread: i32,
) -> Vec<u32> {
    let mut sampler = Sampler::new(backend, vocab, t, p, seed).unwrap();
    (0..steps)
        .map(|k| sampler.sample(&mut logits(vocab, k, spread)).unwrap())
        .collect()
}

#[test]
fn sampled_sequences_match_dllama() {
    for &(vocab, t, p, seed, steps, spread, avx2, generic, neon) in SEQUENCES {
        let what = format!("vocab {vocab} temperature {t} top-p {p} seed {seed}");
        assert_eq!(
            run(Backend::scalar(), vocab, t, p, seed, steps, spread),
            generic,
            "scalar: {what}"
        );
        match avx2_backend() {
            Some(b) => assert_eq!(
                run(b, vocab, t, p, seed, steps, spread),
                avx2,
                "{:?}: {what}",
                b.isa()
            ),
            None => eprintln!("no AVX2 on this CPU: dllama's AVX2 sampler sequence not checked"),
        }
        for b in neon_backends() {
            assert_eq!(
                run(b, vocab, t, p, seed, steps, spread),
                neon,
                "{:?}: {what}",
                b.isa()
            );
        }
    }
}

struct ProbCase {
    vocab: usize,
    temperature: f32,
    top_p: f32,
    seed: u64,
    spread: i32,
    /// (sampled id, bits of the probabilities dllama leaves in the logits buffer).
    avx2: (u32, &'static [u32]),
    generic: (u32, &'static [u32]),
    neon: (u32, &'static [u32]),
}

/// Bit-exact probabilities (the softmax of `logits / temperature`) and the id drawn from them.
const PROBS: &[ProbCase] = &[
    ProbCase {
        vocab: 37,
        temperature: 0.7,
        top_p: 0.9,
        seed: 3,
        spread: 50,
        avx2: (
            3,
            &[
                0x2ed7b961, 0x2d2a91e7, 0x2b86de70, 0x3e7863ea, 0x3cc46932, 0x3b1b4af8, 0x3975940a,
                0x37c22bf8, 0x361988e7, 0x3472cc59, 0x32bff965, 0x3117cbee, 0x2f700cc4, 0x2dbdcd43,
                0x2c161417, 0x3f0a3358, 0x3d5a8ce7, 0x3baccdf4, 0x3a08a2d5, 0x3858139b, 0x36aad932,
                0x350716db, 0x3355a193, 0x31a8ea13, 0x30058f57, 0x2e533697, 0x2ca700a9, 0x2b040c4d,
                0x3df331de, 0x3c4049b4, 0x3a980b67, 0x38f07119, 0x373e1d9e, 0x359652c1, 0x33edb832,
                0x323bf6a7, 0x30949f14,
            ],
        ),
        generic: (
            3,
            &[
                0x2ed7b8f2, 0x2d2a920e, 0x2b86de70, 0x3e7863fe, 0x3cc466ab, 0x3b1b4b06, 0x39759417,
                0x37c22d72, 0x361988f1, 0x3472cc65, 0x32bffaab, 0x3117cbff, 0x2f700cc3, 0x2dbdce5a,
                0x2c16141f, 0x3f0a3364, 0x3d5a8c93, 0x3bacce2f, 0x3a08a2e2, 0x38581329, 0x36aad963,
                0x350716e8, 0x3355a105, 0x31a8ea39, 0x30058f62, 0x2e5335de, 0x2ca700be, 0x2b040c5b,
                0x3df331ef, 0x3c404b00, 0x3a980b75, 0x38f07125, 0x373e1daf, 0x359652ce, 0x33edb848,
                0x323bf6b8, 0x30949f21,
            ],
        ),
        neon: (
            3,
            &[
                0x2ed75b9d, 0x2d2aa615, 0x2b86e304, 0x3e7854ac, 0x3cc3ad25, 0x3b1b5aff, 0x3975806a,
                0x37c24568, 0x3619984f, 0x3472b414, 0x32c01251, 0x3117daa9, 0x2f6fef71, 0x2dbde5bc,
                0x2c16221c, 0x3f0a4493, 0x3d5a3910, 0x3bace2ad, 0x3a08a8f5, 0x3857b71d, 0x36aaed7e,
                0x35071bb1, 0x33553bf1, 0x31a8fdf5, 0x300592d7, 0x2e52c73e, 0x2ca71402, 0x2b040e53,
                0x3df31a4c, 0x3c4062b2, 0x3a981a3c, 0x38f0549c, 0x373e350a, 0x359660e2, 0x33ed9693,
                0x323c0dce, 0x3094b19b,
            ],
        ),
    },
    ProbCase {
        vocab: 288,
        temperature: 1.0,
        top_p: 0.0,
        seed: 9,
        spread: 100,
        avx2: (
            238,
            &[
                0x373094d6, 0x369d1bc4, 0x360bc82b, 0x3ca7323a, 0x3c14c1ed, 0x3b845a18, 0x3aeb82f0,
                0x3a518a81, 0x39ba6d0e, 0x3925de7b, 0x389393a1, 0x38034d25, 0x3769a460, 0x36cfe0ca,
                0x3638f254, 0x3cdd3941, 0x3c44d564, 0x3baf1e20, 0x3b1bce55, 0x3a8a9f85, 0x39f6abab,
                0x395b77c7, 0x38c345ac, 0x382dba4e, 0x379a91b9, 0x370985d4, 0x3674b666, 0x35d9b9cc,
                0x3c82367d, 0x3be7b488, 0x3b4e27c6, 0x3ab769ea, 0x3a233039, 0x39913104, 0x39012de0,
                0x3865ddb0, 0x37cc8500, 0x3735f547, 0x36a1e495, 0x361009fa, 0x3cac49a3, 0x3c1949af,
                0x3b8861f6, 0x3af2af0d, 0x3a57ebd3, 0x39c01a00, 0x392aeb93, 0x3898122e, 0x38074cd6,
                0x3770c1e2, 0x36d63527, 0x363e93c6, 0x3ce3f5e0, 0x3c4ad322, 0x3bb47331, 0x3b208d08,
                0x3a8ed848, 0x39fe2ec4, 0x396226a4, 0x38c93724, 0x3833048d, 0x379f46c7, 0x370db5ff,
                0x367c2a3f, 0x35e05b1e, 0x3c862daa, 0x3beec2f2, 0x3b546e98, 0x3abcff75, 0x3a28286d,
                0x39959cfc, 0x39051d05, 0x386cddbd, 0x37d2bf08, 0x373b7f81, 0x36a6d2c0, 0x36146cf2,
                0x3cb188b2, 0x3c1df4c3, 0x3b8c8942, 0x3afa1315, 0x3a5e7f02, 0x39c5f70f, 0x39301ff9,
                0x389cb3c3, 0x380b6ba8, 0x377816e4, 0x36dcbae7, 0x36446505, 0x3ceae715, 0x3c50ffdd,
                0x3bb9f1b6, 0x3b2570b3, 0x3a9331f2, 0x3a02f63d, 0x396909ba, 0x38cf5748, 0x383877ed,
                0x37a42089, 0x371206d3, 0x3681ec20, 0x35e7302c, 0x3c8a43c6, 0x3bf60865, 0x3b5ae686,
                0x3ac2c487, 0x3a2d4757, 0x399a2b69, 0x39092acd, 0x38741472, 0x37d929c3, 0x37413910,
                0x36abe743, 0x3618f21d, 0x3cb6f08e, 0x3c22c436, 0x3b90d0ee, 0x3b00d861, 0x3a654590,
                0x39cbfdb1, 0x39357ce0, 0x38a17977, 0x380faa9f, 0x377fa51d, 0x36e373a7, 0x364a5f57,
                0x3cf20e6c, 0x3c575cef, 0x3bbf9ae7, 0x3b2a7a75, 0x3a97ad8c, 0x3a06f342, 0x39702286,
                0x38d5a75f, 0x383e15b0, 0x37a9200d, 0x37167951, 0x3685e10a, 0x35ee3a8b, 0x3c8e79bf,
                0x3bfd868d, 0x3b6190fd, 0x3ac8b209, 0x3a328e17, 0x399edd5d, 0x390d5836, 0x387b835c,
                0x37dfc69b, 0x37471a6d, 0x36b12348, 0x361d9a8b, 0x3cbc8268, 0x3c27b923, 0x3b9539f6,
                0x3b04c4e8, 0x3a6c4100, 0x39d23389, 0x393b0373, 0x38a66452, 0x38140ab8, 0x3783b71a,
                0x36ea60f2, 0x36508885, 0x3cf96d96, 0x3c5debc7, 0x3bc57420, 0x3b2fab6c, 0x3a9c4c0e,
                0x3a0b0f63, 0x397772b3, 0x38dc28d6, 0x3843e321, 0x37ae467b, 0x371b0e73, 0x3689f4cd,
                0x35f57bde, 0x3c92d087, 0x3c029f90, 0x3b686f80, 0x3acece16, 0x3a37fde3, 0x39a3b3e3,
                0x3911a62d, 0x3881961d, 0x37e6972c, 0x374d29f9, 0x36b6881b, 0x3622673e, 0x3cc243b8,
                0x3c2cd4a8, 0x3b99c561, 0x3b08d005, 0x3a7372e2, 0x39d89a0a, 0x3940b4f4, 0x38ab7578,
                0x38188ce4, 0x3787b9ff, 0x36f18429, 0x3656e1f1, 0x3d008319, 0x3c64add1, 0x3bcb76bb,
                0x3b3504c7, 0x3aa10e96, 0x3a0f4b8d, 0x397efbec, 0x38e2dd20, 0x3849d96f, 0x37b394fb,
                0x371fc74d, 0x368e2860, 0x35fcf5bb, 0x3c974927, 0x3c0699f3, 0x3b6f839d, 0x3ad519fa,
                0x3a3d97ea, 0x39a8b01c, 0x391615b7, 0x3885886f, 0x37ed9ceb, 0x37536904, 0x36bc16ca,
                0x36275955, 0x3cc82d45, 0x3c3217ee, 0x3b9e7437, 0x3b0cfaa9, 0x3a7adce6, 0x39df328e,
                0x394696ba, 0x38b0ae17, 0x381d3236, 0x378bdc29, 0x36f8df16, 0x365d6d0b, 0x3d046d08,
                0x3c6ba4a1, 0x3bd1a876, 0x3b3a87b6, 0x3aa5f630, 0x3a13a8ba, 0x39835feb, 0x38e9c5ca,
                0x384ffe8c, 0x37b90cc7, 0x3724a4f1, 0x36927ca2, 0x360254f1, 0x3c9be49b, 0x3c0ab359,
                0x3b76ceee, 0x3adb9724, 0x3a436194, 0x39add327, 0x391aa7d1, 0x3889997f, 0x37f4d95d,
                0x3759d8f1, 0x36c1d4d2, 0x362c71f7, 0x3cce4541, 0x3c378421, 0x3ba3478c, 0x3b1145c9,
                0x3a814057, 0x39e5fe8c, 0x394ca23d, 0x38b60f4c, 0x3821fbc4, 0x37901e94, 0x370039af,
                0x36642b25, 0x3d087576, 0x3c72d1be, 0x3bd80ab0, 0x3b403574, 0x3aab0400, 0x3a1827ee,
                0x3987602b, 0x38f0e453, 0x385653c0, 0x37beaf05, 0x3729a87d, 0x3696f2bd, 0x36064d13,
                0x3ca0a3fe,
            ],
        ),
        generic: (
            238,
            &[
                0x3730954b, 0x369d1bdd, 0x360bc83e, 0x3ca7326f, 0x3c14c204, 0x3b845a2d, 0x3aeb830b,
                0x3a5189ea, 0x39ba6e12, 0x3925dea9, 0x389393b7, 0x38034d39, 0x3769a475, 0x36cfe016,
                0x3638f33c, 0x3cdd3928, 0x3c44d374, 0x3baf1e85, 0x3b1bce70, 0x3a8a9f9c, 0x39f6abcd,
                0x395b779f, 0x38c3437a, 0x382dbaaa, 0x379a91d0, 0x370985eb, 0x3674b685, 0x35d9b999,
                0x3c823691, 0x3be7b49b, 0x3b4e26ef, 0x3ab76ab7, 0x3a23305e, 0x39913119, 0x39012df3,
                0x3865ddbe, 0x37cc8402, 0x3735f5fd, 0x36a1e4bb, 0x36100a10, 0x3cac49f3, 0x3c1949c9,
                0x3b88620b, 0x3af2af2e, 0x3a57eb8f, 0x39c01b8f, 0x392aebd9, 0x38981244, 0x38074ce8,
                0x3770c200, 0x36d634cc, 0x363e9528, 0x3ce3f5e8, 0x3c4ad1fa, 0x3bb473d2, 0x3b208d28,
                0x3a8ed85e, 0x39fe2eeb, 0x396226a6, 0x38c935cf, 0x3833051c, 0x379f46e7, 0x370db616,
                0x367c2a60, 0x35e05b19, 0x3c862dbf, 0x3beec311, 0x3b546e2b, 0x3abd00b2, 0x3a2828a5,
                0x39959d13, 0x39051d17, 0x386cddd9, 0x37d2be7f, 0x373b809b, 0x36a6d2f0, 0x36146d09,
                0x3cb1892e, 0x3c1df4df, 0x3b8c8958, 0x3afa133b, 0x3a5e7ef2, 0x39c5f548, 0x39302066,
                0x389cb3e0, 0x380b6bc0, 0x3778170c, 0x36dcbacf, 0x364462ff, 0x3ceae72f, 0x3c50ff3c,
                0x3bb9f2b1, 0x3b2570e0, 0x3a933209, 0x3a02f652, 0x396909d1, 0x38cf5687, 0x383878cd,
                0x37a420b0, 0x371206ea, 0x3681ec32, 0x35e7303e, 0x3c8a43dc, 0x3bf60889, 0x3b5ae65d,
                0x3ac2c23d, 0x3a2d47ab, 0x399a2b82, 0x39092ae2, 0x3874148e, 0x37d92985, 0x37413674,
                0x36abe78b, 0x3618f235, 0x3cb6f153, 0x3c22c45c, 0x3b90d104, 0x3b00d873, 0x3a65459a,
                0x39cbfca6, 0x39357d8e, 0x38a17999, 0x380faab6, 0x377fa543, 0x36e373ae, 0x364a5e22,
                0x3cf20e8e, 0x3c575ca6, 0x3bbf9c68, 0x3b2a7ab9, 0x3a97ada2, 0x3a06f357, 0x397022a7,
                0x38d5a6fe, 0x383e1706, 0x37a92047, 0x3716796b, 0x3685e11c, 0x35ee3aa8, 0x3c8e79d5,
                0x3bfd86b4, 0x3b6190fc, 0x3ac8b0a2, 0x3a328e9f, 0x399edd7b, 0x390d584c, 0x387b8382,
                0x37dfc695, 0x374718d3, 0x36b123c3, 0x361d9aa9, 0x3cbc839a, 0x3c27b959, 0x3b953a0e,
                0x3b04c4fc, 0x3a6c411a, 0x39d232fe, 0x393b0482, 0x38a66481, 0x38140acc, 0x3783b72d,
                0x36ea6104, 0x365087da, 0x3cf96dbb, 0x3c5debb2, 0x3bc57246, 0x3b2fabd6, 0x3a9c4c2a,
                0x3a0b0f78, 0x397772d9, 0x38dc28b8, 0x3843e10b, 0x37ae46d5, 0x371b0e8e, 0x3689f4df,
                0x35f57c04, 0x3c92d09d, 0x3c029fa4, 0x3b686f94, 0x3acecd4c, 0x3a37febb, 0x39a3b40a,
                0x3911a643, 0x38819631, 0x37e6973a, 0x374d290a, 0x36b688d7, 0x36226763, 0x3cc24156,
                0x3c2cd4fb, 0x3b99c57b, 0x3b08d01a, 0x3a737302, 0x39d899c9, 0x3940b693, 0x38ab75c5,
                0x38188cff, 0x3787ba11, 0x36f1844f, 0x3656e19e, 0x3d00832d, 0x3c64addb, 0x3bcb75a3,
                0x3b35056f, 0x3aa10eba, 0x3a0f4ba4, 0x397efc0f, 0x38e2dd23, 0x3849d82b, 0x37b39591,
                0x371fc76d, 0x368e2875, 0x35fcf5e3, 0x3c97493f, 0x3c069a07, 0x3b6f83bb, 0x3ad51996,
                0x3a3d9935, 0x39a8b056, 0x391615ce, 0x38858880, 0x37ed9d02, 0x37536887, 0x36bc17ef,
                0x36275988, 0x3cc82bcf, 0x3c321871, 0x3b9e7455, 0x3b0cfabe, 0x3a7add0a, 0x39df3280,
                0x3946950b, 0x38b0ae8b, 0x381d3254, 0x378bdc40, 0x36f8df3e, 0x365d6cf3, 0x3d046d1c,
                0x3c6ba4bc, 0x3bd1a7e1, 0x3b3a88bd, 0x3aa5f660, 0x3a13a8d0, 0x39835fff, 0x38e9c5dd,
                0x384ffdd6, 0x37b90dae, 0x3724a51c, 0x36927cba, 0x36025505, 0x3c9be4b7, 0x3c0ab36f,
                0x3b76cf12, 0x3adb9700, 0x3a435f65, 0x39add382, 0x391aa7e9, 0x38899995, 0x37f4d983,
                0x3759d8c1, 0x36c1d25e, 0x362c7248, 0x3cce446c, 0x3c3784f0, 0x3ba347b4, 0x3b1145df,
                0x3a81406c, 0x39e5fe9c, 0x394ca141, 0x38b61001, 0x3821fbe5, 0x37901ea9, 0x370039c3,
                0x36642b31, 0x3d08758b, 0x3c72d1e1, 0x3bd80a6d, 0x3b403707, 0x3aab0449, 0x3a182808,
                0x39876040, 0x38f0e46c, 0x3856536c, 0x37beb069, 0x3729a8ba, 0x3696f2d2, 0x36064d29,
                0x3ca0a420,
            ],
        ),
        neon: (
            238,
            &[
                0x3730a880, 0x369d2af5, 0x360bd004, 0x3ca743f4, 0x3c14ce43, 0x3b845c6a, 0x3aeb6070,
                0x3a511e29, 0x39ba82ba, 0x3925efe7, 0x38939f78, 0x38034e80, 0x37697e28, 0x36cf6d95,
                0x363907b5, 0x3cdd51fe, 0x3c442b1b, 0x3baf317d, 0x3b1bdd27, 0x3a8aa6a1, 0x39f69bc9,
                0x395b2e28, 0x38c29210, 0x382dcd67, 0x379aa025, 0x37098c35, 0x3674a3a1, 0x35d96ad0,
                0x3c8236ca, 0x3be78a44, 0x3b4dad1b, 0x3ab77ef3, 0x3a234106, 0x39913bc8, 0x39012d1d,
                0x3865af5f, 0x37cc02e2, 0x37360a04, 0x36a1f513, 0x36101434, 0x3cac5c6f, 0x3c1957b3,
                0x3b886787, 0x3af29928, 0x3a5796ea, 0x39c030f6, 0x392afe15, 0x38981fc4, 0x38075195,
                0x3770a8d5, 0x36d5da57, 0x363eaa62, 0x3ce40f81, 0x3c4a48ec, 0x3bb487a1, 0x3b209d2e,
                0x3a8ee1df, 0x39fe28a0, 0x3961ef7a, 0x38c8a4df, 0x383318b2, 0x379f5696, 0x370dbef9,
                0x367c21a7, 0x35e01f5d, 0x3c863189, 0x3beea677, 0x3b540d65, 0x3abd15b0, 0x3a283a5d,
                0x3995a9aa, 0x39051ffd, 0x386cbdcf, 0x37d2576d, 0x373b9567, 0x36a6e463, 0x3614792b,
                0x3cb19c8b, 0x3c1e0435, 0x3b8c918d, 0x3afa07d9, 0x3a5e3e31, 0x39c55346, 0x39303388,
                0x389cc2db, 0x380b7348, 0x37780904, 0x36dc7511, 0x3643b826, 0x3ceb018f, 0x3c50914f,
                0x3bba0746, 0x3b258206, 0x3a933da2, 0x3a02f745, 0x3968e249, 0x38cee1c5, 0x38388d30,
                0x37a4318e, 0x371211fb, 0x3681ec21, 0x35e704d2, 0x3c8a4aa6, 0x3bf5f798, 0x3b5a9b2e,
                0x3ac20dcd, 0x3a2d5a54, 0x399a39b5, 0x390930ec, 0x387400b5, 0x37d8d8eb, 0x3740787d,
                0x36abf9f7, 0x36190007, 0x3cb7057f, 0x3c22d4ea, 0x3b90db84, 0x3b00d743, 0x3a6515e3,
                0x39cb7917, 0x39359183, 0x38a189d7, 0x380fb4a4, 0x377fa0a5, 0x36e33fb1, 0x3649d2e8,
                0x3cf229bd, 0x3c570624, 0x3bbfb1be, 0x3b2a8ce0, 0x3a97bafd, 0x3a06f7be, 0x3970086e,
                0x38d54a9c, 0x383e2c29, 0x37a9322e, 0x37168654, 0x3685e4a8, 0x35ee1d24, 0x3c8e8324,
                0x3bfd7fa2, 0x3b615857, 0x3ac81d13, 0x3a32a224, 0x399eed10, 0x390d60f9, 0x387b79f9,
                0x37df894b, 0x37467cf9, 0x36b13711, 0x361da9e9, 0x3cbc9889, 0x3c27caf9, 0x3b95467d,
                0x3b04c797, 0x3a6c1fea, 0x39d1c9d1, 0x393b193d, 0x38a675dd, 0x381416c2, 0x3783b8d6,
                0x36ea3c32, 0x36501809, 0x3cf989be, 0x3c5da957, 0x3bc4cd6c, 0x3b2fbee7, 0x3a9c5b06,
                0x3a0b16c6, 0x397763ed, 0x38dbe14e, 0x38433342, 0x37ae59a9, 0x371b1d0a, 0x3689fb74,
                0x35f56a4f, 0x3c92dc0b, 0x3c02a044, 0x3b6846cb, 0x3ace5647, 0x3a38130b, 0x39a3c4cf,
                0x3911b12a, 0x388195c8, 0x37e66a7a, 0x374caad5, 0x36b69cf3, 0x362277e0, 0x3cc25702,
                0x3c2ce791, 0x3b99d38c, 0x3b08d5e5, 0x3a735e2f, 0x39d84760, 0x3940cc0d, 0x38ab881b,
                0x38189aa9, 0x3787bf10, 0x36f16c64, 0x3656897c, 0x3d00919b, 0x3c647cc6, 0x3bcaef9e,
                0x3b351953, 0x3aa11ee0, 0x3a0f5561, 0x397ef6b0, 0x38e2a7ba, 0x38494a64, 0x37b3a93e,
                0x371fd73f, 0x368e3197, 0x35fcee2c, 0x3c975676, 0x3c069e28, 0x3b6f6871, 0x3ad4bb3c,
                0x3a3dae49, 0x39a8c228, 0x39162293, 0x38858bc1, 0x37ed7e5a, 0x375303f9, 0x36bc2cd0,
                0x36276b1b, 0x3cc84234, 0x3c322be4, 0x3b9e83cd, 0x3b0d0337, 0x3a7ad2af, 0x39def3a9,
                0x3945f670, 0x38b0c1c4, 0x381d4172, 0x378be40d, 0x36f8d246, 0x365d2934, 0x3d047bfc,
                0x3c6b8263, 0x3bd13c94, 0x3b3a9d69, 0x3aa607a4, 0x3a13b49b, 0x39836157, 0x38e99fd5,
                0x384f8bce, 0x37b92224, 0x3724b618, 0x36928802, 0x36025561, 0x3c9bf373, 0x3c0aba82,
                0x3b76bf40, 0x3adb4de8, 0x3a42aea1, 0x39ade642, 0x391ab643, 0x38899fec, 0x37f4c6d3,
                0x37598a53, 0x36c11835, 0x362c84d1, 0x3cce5b8b, 0x3c379930, 0x3ba35860, 0x3b115098,
                0x3a813faa, 0x39e5d087, 0x394c20a5, 0x38b6240c, 0x38220c45, 0x379028d2, 0x370037e7,
                0x3663f8e9, 0x3d0884de, 0x3c72bc11, 0x3bd7b631, 0x3b404c70, 0x3aab168b, 0x3a18358d,
                0x398764fb, 0x38f0cb7b, 0x3855f963, 0x37bec5a2, 0x3729babc, 0x3696ffea, 0x36065110,
                0x3ca0b42a,
            ],
        ),
    },
    ProbCase {
        vocab: 13,
        temperature: 0.5,
        top_p: 0.95,
        seed: 11,
        spread: 10,
        avx2: (
            3,
            &[
                0x00000000, 0x00000000, 0x00000000, 0x3f7ffffe, 0x33c5dcac, 0x2818ecb8, 0x1c6c6382,
                0x10b6b64e, 0x050d35d6, 0x000001b5, 0x00000000, 0x00000000, 0x00000000,
            ],
        ),
        generic: (
            3,
            &[
                0x00000000, 0x00000000, 0x00000000, 0x3f7ffffe, 0x33c5dc11, 0x2818ecbe, 0x1c6c6385,
                0x10b6b3fa, 0x050d35d6, 0x000001b5, 0x00000000, 0x00000000, 0x00000000,
            ],
        ),
        neon: (
            3,
            &[
                0x0041ea45, 0x0041ea45, 0x0041ea45, 0x3f7ffffe, 0x33c565e8, 0x2818eb20, 0x1c6c40aa,
                0x10b5f651, 0x050d3232, 0x0041ea45, 0x0041ea45, 0x0041ea45, 0x00000000,
            ],
        ),
    },
];

fn probs(backend: Backend, c: &ProbCase) -> (u32, Vec<u32>) {
    let mut sampler = Sampler::new(backend, c.vocab, c.temperature, c.top_p, c.seed).unwrap();
    let mut x = logits(c.vocab, 3, c.spread);
    let id = sampler.sample(&mut x).unwrap();
    (id, x.iter().map(|v| v.to_bits()).collect())
}

#[test]
fn probabilities_are_bit_identical_to_dllama() {
    for c in PROBS {
        let (id, bits) = probs(Backend::scalar(), c);
        assert_eq!(
            (id, &bits[..]),
            (c.generic.0, c.generic.1),
            "scalar, vocab {}",
            c.vocab
        );
        if let Some(b) = avx2_backend() {
            let (id, bits) = probs(b, c);
            assert_eq!(
                (id, &bits[..]),
                (c.avx2.0, c.avx2.1),
                "{:?}, vocab {}",
                b.isa(),
                c.vocab
            );
        }
        for b in neon_backends() {
            let (id, bits) = probs(b, c);
            assert_eq!(
                (id, &bits[..]),
                (c.neon.0, c.neon.1),
                "{:?}, vocab {}",
                b.isa(),
                c.vocab
            );
        }
    }
}

#[test]
fn argmax_takes_the_first_maximum() {
    // dllama: {1, 3, 3, 2, 3, 0, 0, 0} -> 1 and all equal -> 0.
    for backend in Backend::all_supported() {
        let mut s = Sampler::new(backend, 8, 0.0, 0.9, 1).unwrap();
        assert_eq!(
            s.sample(&mut [1.0, 3.0, 3.0, 2.0, 3.0, 0.0, 0.0, 0.0])
                .unwrap(),
            1
        );
        assert_eq!(s.sample(&mut [-1.0; 8]).unwrap(), 0);
        // Greedy sampling draws no coin.
        assert_eq!(s.rng(), XorShiftRng::new(1));
    }
}

#[test]
fn xorshift_matches_the_reference_recurrence() {
    // Values of dllama's randomU32/randomF32 written out by hand for seed 1:
    // state 1 -> 1 ^ (1 << 25) = 0x2000001, then ^ (>> 27) = 0x2000001.
    let mut rng = XorShiftRng::new(1);
    let first = rng.next_u32();
    assert_eq!(rng.state(), 0x0200_0001);
    assert_eq!(
        first,
        (0x0200_0001u64.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    );
    let mut zero = XorShiftRng::new(0);
    assert_eq!((zero.next_u32(), zero.next_f32()), (0, 0.0));
}

#[test]
fn invalid_settings_are_typed_errors() {
    let b = Backend::scalar();
    assert_eq!(
        Sampler::new(b, 0, 1.0, 0.9, 1).unwrap_err(),
        SamplerError::BadVocabSize(0)
    );
    assert!(matches!(
        Sampler::new(b, 4, -1.0, 0.9, 1),
        Err(SamplerError::BadTemperature(_))
    ));
    assert!(matches!(
        Sampler::new(b, 4, f32::NAN, 0.9, 1),
        Err(SamplerError::BadTemperature(_))
    ));
    assert!(matches!(
        Sampler::new(b, 4, 1.0, f32::NAN, 1),
        Err(SamplerError::BadTopP(_))
    ));
    let mut s = Sampler::new(b, 4, 1.0, 0.9, 1).unwrap();
    assert_eq!(
        s.sample(&mut [0.0; 3]).unwrap_err(),
        SamplerError::LogitsLength {
            expected: 4,
            got: 3
        }
    );
    assert!(s.set_temperature(f32::INFINITY).is_err());
    // A one-token vocabulary with top-p (undefined behaviour in dllama) picks that token.
    let mut one = Sampler::new(b, 1, 0.8, 0.9, 3).unwrap();
    assert_eq!(one.sample(&mut [2.5]).unwrap(), 0);
}

proptest! {
    #[test]
    fn any_logits_give_an_id_in_range(
        values in proptest::collection::vec(proptest::num::f32::ANY, 1..64),
        t in prop_oneof![Just(0.0f32), 0.01f32..4.0],
        p in prop_oneof![Just(0.0f32), 0.0f32..1.0, Just(1.0f32)],
        seed in any::<u64>(),
    ) {
        for backend in Backend::all_supported() {
            let mut s = Sampler::new(backend, values.len(), t, p, seed).unwrap();
            let id = s.sample(&mut values.clone()).unwrap();
            prop_assert!((id as usize) < values.len());
        }
    }
}
