//! The ops against dllama's own outputs, bit for bit.
//!
//! `cases()` builds a deterministic list of op calls (odd sizes, every tail length, thread
//! splits, ties in the MoE gate, llama / llama 3.1 / falcon rope caches, attention shapes).
//! `kernels/tests/data/ops_dllama_<arch>.bin` holds what dllama's C++ kernels (nn-cpu-ops.cpp and
//! nn-core.cpp, compiled by g++ 12 with the flags of each dllama build) return for the same
//! calls: those files are dllama outputs used as expected values. The harness that produced them
//! is not part of this repository; to regenerate, dump the cases with
//! `AIRLLAMA_OPS_CASES_OUT=<file> cargo test -p airllama-kernels --test ops_dllama -- --ignored`,
//! feed them to a program that includes nn-cpu-ops.cpp and writes each result in the format of
//! `encode_outputs`, and point `AIRLLAMA_OPS_REF=<file>` at the result to check it without
//! replacing the committed file (large `AIRLLAMA_OPS_SCALE` values give bigger cases).
//!
//! The x86 file was produced by both the `-march=native` (AVX-512 machine) and the
//! `-mavx2 -mfma -mf16c` builds (identical), the aarch64 file by both `-march=armv8-a` and
//! `-march=armv8.2-a+dotprod+fp16` builds under qemu (identical).
use airllama_kernels::backend::{Backend, Isa};
use airllama_kernels::block::Q80Block;
use airllama_kernels::ops;
use airllama_kernels::parallel::split_range;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// A float in (-2^(23-k), 2^(23-k)) with 24 random bits, built exactly.
    fn float(&mut self, k: i32) -> f32 {
        let i = (self.next() >> 40) as i32 - (1 << 23);
        i as f32 * 2f32.powi(-k)
    }
    fn floats(&mut self, n: usize, k: i32) -> Vec<f32> {
        (0..n).map(|_| self.float(k)).collect()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn q80(&mut self, n_blocks: usize) -> Vec<Q80Block> {
        (0..n_blocks)
            .map(|_| {
                // Scales of either sign, normal and subnormal half floats.
                let exp = 1 + self.below(20) as u16;
                let d = ((self.below(2) as u16) << 15) | (exp << 10) | self.below(1024) as u16;
                let mut qs = [0i8; 32];
                for q in &mut qs {
                    *q = self.next() as i8;
                }
                Q80Block {
                    d: d.to_le_bytes(),
                    qs,
                }
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Case {
    Silu {
        n_threads: u32,
        x: Vec<f32>,
    },
    Softmax {
        x: Vec<f32>,
    },
    InvRms {
        eps: f32,
        x: Vec<f32>,
    },
    RmsNormF32 {
        n_threads: u32,
        inv_rms: f32,
        x: Vec<f32>,
        w: Vec<f32>,
    },
    RmsNormQ80 {
        n_threads: u32,
        inv_rms: f32,
        x: Vec<Q80Block>,
        w: Vec<f32>,
    },
    AddQ80 {
        n_threads: u32,
        y: Vec<f32>,
        x: Vec<Q80Block>,
    },
    RopeCache {
        rope: Rope,
    },
    Rope {
        rope: Rope,
        is_q: bool,
        pos: u32,
        n_threads: u32,
        x: Vec<f32>,
    },
    Attention {
        att: Att,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
    },
    Gelu {
        n_threads: u32,
        x: Vec<f32>,
    },
    MoeGate {
        k: u32,
        norm: bool,
        x: Vec<f32>,
    },
    MulQ80 {
        n_threads: u32,
        x: Vec<f32>,
        m: Vec<Q80Block>,
    },
    HeapSort {
        x: Vec<f32>,
    },
}

#[derive(Clone, Copy, Debug)]
struct Rope {
    kind: u32,
    seq_len: u32,
    head_dim: u32,
    q_dim: u32,
    kv_dim: u32,
    n_kv_heads: u32,
    n_nodes: u32,
    node_index: u32,
    theta: f32,
    factor: f32,
    low: f32,
    high: f32,
    orig_max: u32,
}

#[derive(Clone, Copy, Debug)]
struct Att {
    n_heads: u32,
    n_heads0: u32,
    n_kv_heads: u32,
    head_dim: u32,
    seq_len: u32,
    kv_dim0: u32,
    pos: u32,
    n_threads: u32,
}

fn scale_factor() -> usize {
    std::env::var("AIRLLAMA_OPS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn cases() -> Vec<Case> {
    let scale = scale_factor();
    let mut r = Rng(0x5e_ed0f_d11a);
    let mut out = Vec::new();
    for n in (1..=40).chain([255, 515 * scale]) {
        for n_threads in [1, 3] {
            out.push(Case::Silu {
                n_threads,
                x: r.floats(n, 19),
            });
        }
    }
    // Large magnitudes reach the clamps and glibc's special cases.
    out.push(Case::Silu {
        n_threads: 1,
        x: r.floats(203 * scale, 15),
    });
    for n in (1..=40).chain([257, 1031 * scale]) {
        out.push(Case::Softmax { x: r.floats(n, 19) });
    }
    out.push(Case::Softmax {
        x: r.floats(77, 14),
    });
    for n in [8, 16, 24, 32, 64, 192, 256, 1024] {
        out.push(Case::InvRms {
            eps: 1e-5,
            x: r.floats(n, 21),
        });
        out.push(Case::InvRms {
            eps: 1e-6,
            x: r.floats(n, 26),
        });
    }
    for n in [37, 192, 301] {
        let inv_rms = r.float(22).abs();
        out.push(Case::RmsNormF32 {
            n_threads: 3,
            inv_rms,
            x: r.floats(n, 20),
            w: r.floats(n, 22),
        });
    }
    for nb in [1, 6, 17] {
        let inv_rms = r.float(22).abs();
        out.push(Case::RmsNormQ80 {
            n_threads: 2,
            inv_rms,
            x: r.q80(nb),
            w: r.floats(nb * 32, 22),
        });
        out.push(Case::AddQ80 {
            n_threads: 2,
            y: r.floats(nb * 32, 20),
            x: r.q80(nb),
        });
        out.push(Case::MulQ80 {
            n_threads: 2,
            x: r.floats(nb * 32, 20),
            m: r.q80(nb),
        });
    }
    let ropes = [
        // llama, 2 nodes, node 1 (qShift != 0)
        Rope {
            kind: 0,
            seq_len: 8,
            head_dim: 16,
            q_dim: 192,
            kv_dim: 96,
            n_kv_heads: 6,
            n_nodes: 2,
            node_index: 1,
            theta: 10000.0,
            factor: 1.0,
            low: 0.0,
            high: 0.0,
            orig_max: 0,
        },
        // llama 3.1 scaling (SmolLM-like numbers), one node
        Rope {
            kind: 2,
            seq_len: 10,
            head_dim: 64,
            q_dim: 128,
            kv_dim: 64,
            n_kv_heads: 2,
            n_nodes: 1,
            node_index: 0,
            theta: 500000.0,
            factor: 8.0,
            low: 1.0,
            high: 4.0,
            orig_max: 8192,
        },
        // llama 3.1 with a short original context so that the blend branch runs
        Rope {
            kind: 2,
            seq_len: 8,
            head_dim: 128,
            q_dim: 256,
            kv_dim: 256,
            n_kv_heads: 2,
            n_nodes: 2,
            node_index: 0,
            theta: 500000.0,
            factor: 32.0,
            low: 1.0,
            high: 4.0,
            orig_max: 64,
        },
        // falcon (qwen3)
        Rope {
            kind: 1,
            seq_len: 6,
            head_dim: 128,
            q_dim: 512,
            kv_dim: 256,
            n_kv_heads: 2,
            n_nodes: 2,
            node_index: 1,
            theta: 1000000.0,
            factor: 1.0,
            low: 0.0,
            high: 0.0,
            orig_max: 0,
        },
        Rope {
            kind: 1,
            seq_len: 9,
            head_dim: 24,
            q_dim: 96,
            kv_dim: 48,
            n_kv_heads: 2,
            n_nodes: 1,
            node_index: 0,
            theta: 10000.0,
            factor: 1.0,
            low: 0.0,
            high: 0.0,
            orig_max: 0,
        },
    ];
    for rope in ropes {
        out.push(Case::RopeCache { rope });
        for is_q in [true, false] {
            let dim0 = if is_q {
                rope.q_dim / rope.n_nodes
            } else {
                rope.kv_dim / rope.n_nodes
            };
            for n_threads in [1, 3] {
                let pos = r.below(u64::from(rope.seq_len)) as u32;
                out.push(Case::Rope {
                    rope,
                    is_q,
                    pos,
                    n_threads,
                    x: r.floats(dim0 as usize, 20),
                });
            }
        }
    }
    let atts = [
        Att {
            n_heads: 8,
            n_heads0: 4,
            n_kv_heads: 4,
            head_dim: 16,
            seq_len: 40,
            kv_dim0: 32,
            pos: 0,
            n_threads: 1,
        },
        Att {
            n_heads: 8,
            n_heads0: 4,
            n_kv_heads: 4,
            head_dim: 16,
            seq_len: 40,
            kv_dim0: 32,
            pos: 39,
            n_threads: 3,
        },
        Att {
            n_heads: 12,
            n_heads0: 12,
            n_kv_heads: 6,
            head_dim: 16,
            seq_len: 32,
            kv_dim0: 96,
            pos: 13,
            n_threads: 2,
        },
        Att {
            n_heads: 32,
            n_heads0: 8,
            n_kv_heads: 8,
            head_dim: 128,
            seq_len: 70,
            kv_dim0: 256,
            pos: 66,
            n_threads: 3,
        },
        Att {
            n_heads: 4,
            n_heads0: 4,
            n_kv_heads: 2,
            head_dim: 64,
            seq_len: 9,
            kv_dim0: 128,
            pos: 6,
            n_threads: 1,
        },
    ];
    for att in atts {
        let q = r.floats((att.n_heads0 * att.head_dim) as usize, 21);
        let cache = (att.seq_len * att.kv_dim0) as usize;
        let (k, v) = (r.floats(cache, 21), r.floats(cache, 21));
        out.push(Case::Attention { att, q, k, v });
    }
    for n in [1, 5, 33] {
        out.push(Case::Gelu {
            n_threads: 2,
            x: r.floats(n, 20),
        });
    }
    for (n, k) in [
        (8, 2),
        (16, 4),
        (17, 3),
        (60, 4),
        (64, 8),
        (128, 8),
        (200, 6),
        (7, 7),
    ] {
        for norm in [true, false] {
            // Few distinct values: many ties, which std::sort orders by its own steps.
            let distinct = 1 + r.below(6);
            let x = (0..n)
                .map(|_| r.below(distinct) as f32 * 0.25 - 0.5)
                .collect();
            out.push(Case::MoeGate { k, norm, x });
            out.push(Case::MoeGate {
                k,
                norm,
                x: r.floats(n as usize, 22),
            });
        }
    }
    for n in [1, 2, 5, 16, 17, 64, 129] {
        let distinct = 1 + r.below(4);
        let x = (0..n).map(|_| r.below(distinct) as f32).collect();
        out.push(Case::HeapSort { x });
    }
    out
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_f32s(b: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
}
fn put_q80(b: &mut Vec<u8>, v: &[Q80Block]) {
    b.extend_from_slice(bytemuck::cast_slice(v));
}
fn put_rope(b: &mut Vec<u8>, r: &Rope) {
    for v in [
        r.kind,
        r.seq_len,
        r.head_dim,
        r.q_dim,
        r.kv_dim,
        r.n_kv_heads,
        r.n_nodes,
        r.node_index,
    ] {
        put_u32(b, v);
    }
    put_f32s(b, &[r.theta, r.factor, r.low, r.high]);
    put_u32(b, r.orig_max);
}

/// The case file the C++ harness reads: per case a u32 op code, then its fields.
fn encode_cases(cases: &[Case]) -> Vec<u8> {
    let mut b = Vec::new();
    put_u32(&mut b, cases.len() as u32);
    for c in cases {
        match c {
            Case::Silu { n_threads, x } => {
                put_u32(&mut b, 1);
                put_u32(&mut b, x.len() as u32);
                put_u32(&mut b, *n_threads);
                put_f32s(&mut b, x);
            }
            Case::Softmax { x } => {
                put_u32(&mut b, 2);
                put_u32(&mut b, x.len() as u32);
                put_f32s(&mut b, x);
            }
            Case::InvRms { eps, x } => {
                put_u32(&mut b, 3);
                put_u32(&mut b, x.len() as u32);
                put_f32s(&mut b, &[*eps]);
                put_f32s(&mut b, x);
            }
            Case::RmsNormF32 {
                n_threads,
                inv_rms,
                x,
                w,
            } => {
                put_u32(&mut b, 4);
                put_u32(&mut b, x.len() as u32);
                put_u32(&mut b, *n_threads);
                put_f32s(&mut b, &[*inv_rms]);
                put_f32s(&mut b, x);
                put_f32s(&mut b, w);
            }
            Case::RmsNormQ80 {
                n_threads,
                inv_rms,
                x,
                w,
            } => {
                put_u32(&mut b, 5);
                put_u32(&mut b, x.len() as u32);
                put_u32(&mut b, *n_threads);
                put_f32s(&mut b, &[*inv_rms]);
                put_q80(&mut b, x);
                put_f32s(&mut b, w);
            }
            Case::AddQ80 { n_threads, y, x } => {
                put_u32(&mut b, 6);
                put_u32(&mut b, x.len() as u32);
                put_u32(&mut b, *n_threads);
                put_f32s(&mut b, y);
                put_q80(&mut b, x);
            }
            Case::RopeCache { rope } => {
                put_u32(&mut b, 7);
                put_rope(&mut b, rope);
            }
            Case::Rope {
                rope,
                is_q,
                pos,
                n_threads,
                x,
            } => {
                put_u32(&mut b, 8);
                put_rope(&mut b, rope);
                put_u32(&mut b, u32::from(*is_q));
                put_u32(&mut b, *pos);
                put_u32(&mut b, *n_threads);
                put_f32s(&mut b, x);
            }
            Case::Attention { att, q, k, v } => {
                put_u32(&mut b, 9);
                for f in [
                    att.n_heads,
                    att.n_heads0,
                    att.n_kv_heads,
                    att.head_dim,
                    att.seq_len,
                    att.kv_dim0,
                    att.pos,
                    att.n_threads,
                ] {
                    put_u32(&mut b, f);
                }
                put_f32s(&mut b, q);
                put_f32s(&mut b, k);
                put_f32s(&mut b, v);
            }
            Case::Gelu { n_threads, x } => {
                put_u32(&mut b, 10);
                put_u32(&mut b, x.len() as u32);
                put_u32(&mut b, *n_threads);
                put_f32s(&mut b, x);
            }
            Case::MoeGate { k, norm, x } => {
                put_u32(&mut b, 11);
                put_u32(&mut b, x.len() as u32);
                put_u32(&mut b, *k);
                put_u32(&mut b, u32::from(*norm));
                put_f32s(&mut b, x);
            }
            Case::HeapSort { x } => {
                put_u32(&mut b, 13);
                put_u32(&mut b, x.len() as u32);
                put_f32s(&mut b, x);
            }
            Case::MulQ80 { n_threads, x, m } => {
                put_u32(&mut b, 12);
                put_u32(&mut b, m.len() as u32);
                put_u32(&mut b, *n_threads);
                put_f32s(&mut b, x);
                put_q80(&mut b, m);
            }
        }
    }
    b
}

fn rope_slice(r: &Rope) -> (ops::RopeKind, ops::RopeSlice) {
    let kind = ops::RopeKind::from_code(r.kind).unwrap();
    let slice = ops::RopeSlice::new(
        kind,
        r.q_dim,
        r.kv_dim,
        r.n_kv_heads,
        r.n_nodes,
        r.seq_len,
        r.head_dim,
        r.theta,
        r.node_index,
    )
    .unwrap();
    (kind, slice)
}

fn rope_cache(backend: Backend, r: &Rope) -> Vec<f32> {
    let (kind, slice) = rope_slice(r);
    let scaling = ops::RopeScaling {
        factor: r.factor,
        low_freq_factor: r.low,
        high_freq_factor: r.high,
        orig_max_seq_len: r.orig_max,
    };
    let mut cache = vec![0.0; slice.cache_len(kind).unwrap()];
    ops::fill_rope_cache(backend, kind, &slice, &scaling, &mut cache).unwrap();
    cache
}

/// Runs one case the way dllama's op forward functions drive the kernels.
fn run(backend: Backend, case: &Case) -> Vec<f32> {
    match case {
        Case::Silu { n_threads, x } => {
            let mut y = x.clone();
            for t in 0..*n_threads as usize {
                let r = split_range(y.len(), *n_threads as usize, t);
                ops::silu(backend, &mut y[r]);
            }
            y
        }
        Case::Softmax { x } => {
            let mut y = x.clone();
            ops::softmax(backend, &mut y);
            y
        }
        Case::InvRms { eps, x } => vec![ops::inv_rms(backend, x, *eps)],
        Case::RmsNormF32 {
            n_threads,
            inv_rms,
            x,
            w,
        } => {
            let mut y = vec![0.0; x.len()];
            for t in 0..*n_threads as usize {
                let r = split_range(y.len(), *n_threads as usize, t);
                ops::rms_norm_f32(backend, &mut y[r.clone()], &x[r.clone()], &w[r], *inv_rms);
            }
            y
        }
        Case::RmsNormQ80 {
            n_threads,
            inv_rms,
            x,
            w,
        } => {
            let mut y = vec![0.0; x.len() * 32];
            for t in 0..*n_threads as usize {
                let r = split_range(x.len(), *n_threads as usize, t);
                let e = r.start * 32..r.end * 32;
                ops::rms_norm_q80(backend, &mut y[e.clone()], &x[r], &w[e], *inv_rms);
            }
            y
        }
        Case::AddQ80 { n_threads, y, x } => {
            let mut y = y.clone();
            for t in 0..*n_threads as usize {
                let r = split_range(x.len(), *n_threads as usize, t);
                ops::merge_add_q80(backend, &mut y[r.start * 32..r.end * 32], &x[r]);
            }
            y
        }
        Case::MulQ80 { n_threads, x, m } => {
            let mut y = vec![0.0; x.len()];
            for t in 0..*n_threads as usize {
                let r = split_range(m.len(), *n_threads as usize, t);
                let e = r.start * 32..r.end * 32;
                ops::mul_q80(backend, &mut y[e.clone()], &x[e], &m[r]);
            }
            y
        }
        Case::RopeCache { rope } => rope_cache(backend, rope),
        Case::Rope {
            rope,
            is_q,
            pos,
            n_threads,
            x,
        } => {
            let cache = rope_cache(backend, rope);
            let (kind, s) = rope_slice(rope);
            let mut y = x.clone();
            let nt = *n_threads as usize;
            let dim0 = if *is_q { s.q_dim0 } else { s.kv_dim0 } as usize;
            if kind == ops::RopeKind::Falcon {
                let hd = s.head_dim as usize;
                let row = &cache[*pos as usize * hd..][..hd];
                for t in 0..nt {
                    let h = split_range(dim0 / hd, nt, t);
                    ops::rope_falcon(backend, &mut y[h.start * hd..h.end * hd], row, hd);
                }
            } else {
                let shift = if *is_q { s.q_shift } else { 0 } as usize;
                let row = &cache[*pos as usize * s.slice_dim as usize + shift..];
                for t in 0..nt {
                    let p = split_range(dim0 / 2, nt, t);
                    let r = 2 * p.start..2 * p.end;
                    ops::rope_llama(backend, &mut y[r.clone()], &row[r]);
                }
            }
            y
        }
        Case::Attention { att, q, k, v } => {
            let hd = att.head_dim as usize;
            let seq = att.seq_len as usize;
            let shape = ops::AttentionShape {
                n_heads: att.n_heads as usize,
                n_kv_heads: att.n_kv_heads as usize,
                head_dim: hd,
                kv_dim0: att.kv_dim0 as usize,
                seq_len: seq,
                pos: att.pos as usize,
            };
            let nh0 = att.n_heads0 as usize;
            let mut y = vec![0.0; nh0 * hd];
            let mut a = vec![0.0; nh0 * seq];
            for t in 0..att.n_threads as usize {
                let h = split_range(nh0, att.n_threads as usize, t);
                ops::multihead_attention(
                    backend,
                    h.clone(),
                    &shape,
                    &mut y[h.start * hd..h.end * hd],
                    q,
                    &mut a[h.start * seq..h.end * seq],
                    k,
                    v,
                );
            }
            // y, then each head's attention weights over 0..=pos.
            let mut out = y;
            for h in 0..nh0 {
                out.extend_from_slice(&a[h * seq..h * seq + att.pos as usize + 1]);
            }
            out
        }
        Case::Gelu { n_threads, x } => {
            let mut y = x.clone();
            for t in 0..*n_threads as usize {
                let r = split_range(y.len(), *n_threads as usize, t);
                ops::gelu(backend, &mut y[r]);
            }
            y
        }
        Case::HeapSort { x } => {
            let mut items: Vec<u32> = (0..x.len() as u32).collect();
            ops::moe::heap_sort_desc_indices(x, &mut items);
            items.iter().map(|&i| i as f32).collect()
        }
        Case::MoeGate { k, norm, x } => {
            let k = *k as usize;
            let mut scratch = vec![0u32; x.len()];
            let (mut idx, mut w) = (vec![0.0; k], vec![0.0; k]);
            ops::moe_gate(backend, x, k, *norm, &mut scratch, &mut idx, &mut w).unwrap();
            idx.extend_from_slice(&w);
            idx
        }
    }
}

/// The reference file format: per case a u32 count, then that many f32 values.
fn decode_outputs(bytes: &[u8]) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    let mut words = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()));
    while let Some(n) = words.next() {
        out.push(words.by_ref().take(n as usize).collect());
    }
    out
}

fn name(case: &Case) -> String {
    let s = format!("{case:?}");
    s.chars().take(90).collect()
}

fn reference_for(isa: Isa) -> Option<Vec<u8>> {
    if isa == Isa::Scalar {
        // dllama built without SIMD and FMA (plain `-O3` on x86-64) is the scalar backend's
        // counterpart, but its glibc still picks the FMA expf at run time on FMA CPUs, so the
        // comparison is opt-in: `AIRLLAMA_OPS_REF_SCALAR=<file>`.
        let path = std::env::var("AIRLLAMA_OPS_REF_SCALAR").ok()?;
        return Some(std::fs::read(path).expect("AIRLLAMA_OPS_REF_SCALAR"));
    }
    if let Ok(path) = std::env::var("AIRLLAMA_OPS_REF") {
        return Some(std::fs::read(path).expect("AIRLLAMA_OPS_REF"));
    }
    let file = match isa {
        Isa::Avx2 | Isa::Avx512 => "ops_dllama_x86.bin",
        Isa::Neon | Isa::NeonDotprod => "ops_dllama_aarch64.bin",
        Isa::Scalar => return None,
    };
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

#[test]
fn matches_dllama_bit_for_bit() {
    let cases = cases();
    let mut checked = 0;
    for backend in Backend::all_supported() {
        let Some(reference) = reference_for(backend.isa()) else {
            continue;
        };
        let expected = decode_outputs(&reference);
        assert_eq!(
            expected.len(),
            cases.len(),
            "reference has another case list"
        );
        let mut failures = Vec::new();
        for (case, want) in cases.iter().zip(&expected) {
            let got: Vec<u32> = run(backend, case).iter().map(|v| v.to_bits()).collect();
            if got.len() != want.len() {
                failures.push(format!(
                    "{}: {} values, dllama {}",
                    name(case),
                    got.len(),
                    want.len()
                ));
                continue;
            }
            let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
            if let Some(&i) = bad.first() {
                failures.push(format!(
                    "{}: {} of {} differ, first [{i}] {} vs dllama {}",
                    name(case),
                    bad.len(),
                    got.len(),
                    f32::from_bits(got[i]),
                    f32::from_bits(want[i])
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{}:\n{}",
            backend.isa(),
            failures.join("\n")
        );
        checked += 1;
    }
    if checked == 0 {
        eprintln!("no SIMD backend on this CPU: nothing compared with dllama");
    }
}

/// Writes the case file for the C++ harness (see the module docs).
#[test]
#[ignore = "writes the case file for the C++ reference harness; run by hand"]
fn dump_cases() {
    let path = std::env::var("AIRLLAMA_OPS_CASES_OUT").expect("AIRLLAMA_OPS_CASES_OUT");
    std::fs::write(path, encode_cases(&cases())).unwrap();
}
