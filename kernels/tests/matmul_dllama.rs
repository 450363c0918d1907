//! Bit-exactness against dllama itself.
//!
//! `tests/data/dllama-ref-<isa>.bin` are outputs of dllama's own `quantizeF32toQ80`,
//! `dequantizeQ80toF32`, `quantizeF32toQ40`, `dequantizeQ40toF32`, `matmul_F32_F32_F32`,
//! `matmul_Q80_Q40_F32` and `llamafile_sgemm` (called as `matmulForward_llamafile` does), built
//! with g++ 12.2 exactly as each dllama build (`-O3 -march=native` on an AVX-512 machine,
//! `-O3 -mavx2 -mfma -mf16c`, plain `-O3` x86-64 for the generic C, aarch64 `-march=armv8-a`
//! and `-march=armv8.2-a+dotprod+fp16` run under qemu), fed the inputs `matmul_support::Rng`
//! regenerates here. They are expected values produced by dllama, not by this crate.
//!
//! Every file is checked against this crate's portable emulation of that build (on any host),
//! and against the real backend whenever the running CPU has it.
mod matmul_support;

use airllama_kernels::backend::{Backend, Isa};
use airllama_kernels::block::{FloatType, Q40Block, Q80Block};
use airllama_kernels::matmul::{matmul_f32, matmul_order, matmul_q80_q40};
use airllama_kernels::quant::{dequantize_q40, dequantize_q80, quantize_q40, quantize_q80};
use matmul_support::*;

fn q80_bytes(b: &[Q80Block]) -> Vec<u8> {
    bytemuck::cast_slice(b).to_vec()
}

fn q40_bytes(b: &[Q40Block]) -> Vec<u8> {
    bytemuck::cast_slice(b).to_vec()
}

/// Splits an output buffer of `batch` rows of `d` values into per-item row slices.
fn rows(out: &mut [f32], d: usize) -> Vec<&mut [f32]> {
    out.chunks_mut(d).collect()
}

/// Checks every record of `isa`'s reference file with `compute`, which returns the bytes this
/// crate produces for a record (from the emulation or the backend).
fn check_file(isa: Isa, what: &str, compute: &dyn Fn(&str, usize) -> Vec<u8>) {
    let records = reference(isa);
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for (tag, expected) in &records {
        let index = seen.entry(tag.clone()).or_default();
        let got = compute(tag, *index);
        assert_eq!(
            got.len(),
            expected.len(),
            "{isa} {what}: {tag} #{index} length"
        );
        if &got != expected {
            let first = got.iter().zip(expected).position(|(a, b)| a != b).unwrap();
            panic!("{isa} {what}: {tag} #{index} differs from dllama at byte {first}");
        }
        *index += 1;
    }
    assert_eq!(
        records.len(),
        4 + F32_CASES.len() + Q40_CASES.len() + E2E_CASES.len()
    );
}

fn emulated(isa: Isa, tag: &str, index: usize) -> Vec<u8> {
    match tag {
        "q80quant" => q80_bytes(&emulate_quantize_q80(isa, &q80_quant_inputs())),
        "q80deqnt" => {
            let q = emulate_quantize_q80(isa, &q80_quant_inputs());
            let v: Vec<f32> = q
                .iter()
                .flat_map(|b| {
                    let d = airllama_kernels::quant::f16_to_f32(u16::from_le_bytes(b.d));
                    b.qs.map(|c| f32::from(c) * d)
                })
                .collect();
            bytemuck::cast_slice(&v).to_vec()
        }
        "q40quant" => q40_bytes(&emulate_quantize_q40(isa, &q40_quant_inputs())),
        "q40deqnt" => {
            let q = emulate_quantize_q40(isa, &q40_quant_inputs());
            let v: Vec<f32> = q
                .iter()
                .flat_map(|b| {
                    let d = airllama_kernels::quant::f16_to_f32(u16::from_le_bytes(b.d));
                    let lo = b.qs.map(|c| f32::from(i16::from(c & 15) - 8) * d);
                    let hi = b.qs.map(|c| f32::from(i16::from(c >> 4) - 8) * d);
                    lo.into_iter().chain(hi)
                })
                .collect();
            bytemuck::cast_slice(&v).to_vec()
        }
        "matf32" => {
            let (d, n, batch) = F32_CASES[index];
            let (w, x) = f32_case_inputs(d, n, batch);
            let order = f32_order(isa, n, batch);
            let out: Vec<f32> = (0..batch)
                .flat_map(|b| (0..d).map(move |i| (b, i)))
                .map(|(b, i)| {
                    emulate_dot_f32(order, &w[i * n..(i + 1) * n], &x[b * n..(b + 1) * n])
                })
                .collect();
            bytemuck::cast_slice(&out).to_vec()
        }
        "matq40" | "e2eq40" => {
            let (d, nb, batch, w, x) = q40_inputs(
                isa,
                tag,
                index,
                &|isa, f| emulate_quantize_q40(isa, f),
                &|isa, f| emulate_quantize_q80(isa, f),
            );
            let order = q40_order(isa, batch);
            let out: Vec<f32> = (0..batch)
                .flat_map(|b| (0..d).map(move |i| (b, i)))
                .map(|(b, i)| {
                    emulate_dot_q40(order, &w[i * nb..(i + 1) * nb], &x[b * nb..(b + 1) * nb])
                })
                .collect();
            bytemuck::cast_slice(&out).to_vec()
        }
        other => panic!("unknown record {other}"),
    }
}

type Quantizer<'a, T> = &'a dyn Fn(Isa, &[f32]) -> Vec<T>;

/// The blocks of a Q80·Q40 record: raw random blocks, or (end to end) floats quantized by the
/// given quantizers.
fn q40_inputs(
    isa: Isa,
    tag: &str,
    index: usize,
    q40: Quantizer<'_, Q40Block>,
    q80: Quantizer<'_, Q80Block>,
) -> (usize, usize, usize, Vec<Q40Block>, Vec<Q80Block>) {
    if tag == "matq40" {
        let (d, nb, batch) = Q40_CASES[index];
        let (w, x) = q40_case_inputs(d, nb, batch);
        (d, nb, batch, w, x)
    } else {
        let (d, nb, batch) = E2E_CASES[index];
        let (wf, xf) = e2e_case_inputs(d, nb, batch);
        (d, nb, batch, q40(isa, &wf), q80(isa, &xf))
    }
}

fn with_backend(backend: Backend, tag: &str, index: usize) -> Vec<u8> {
    let isa = backend.isa();
    match tag {
        "q80quant" | "q80deqnt" => {
            let f = q80_quant_inputs();
            let mut q = vec![Q80Block::default(); f.len() / 32];
            quantize_q80(backend, &f, &mut q);
            if tag == "q80quant" {
                return q80_bytes(&q);
            }
            let mut v = vec![0.0f32; f.len()];
            dequantize_q80(backend, &q, &mut v);
            bytemuck::cast_slice(&v).to_vec()
        }
        "q40quant" | "q40deqnt" => {
            let f = q40_quant_inputs();
            let mut q = vec![Q40Block::default(); f.len() / 32];
            quantize_q40(backend, &f, &mut q);
            if tag == "q40quant" {
                return q40_bytes(&q);
            }
            let mut v = vec![0.0f32; f.len()];
            dequantize_q40(backend, &q, &mut v);
            bytemuck::cast_slice(&v).to_vec()
        }
        "matf32" => {
            let (d, n, batch) = F32_CASES[index];
            let (w, x) = f32_case_inputs(d, n, batch);
            let order =
                matmul_order(backend, batch, n, FloatType::F32, FloatType::F32, true).unwrap();
            let mut out = vec![0.0f32; d * batch];
            matmul_f32(backend, order, &mut rows(&mut out, d), &x, &w, n);
            bytemuck::cast_slice(&out).to_vec()
        }
        "matq40" | "e2eq40" => {
            let quant40 = |_: Isa, f: &[f32]| {
                let mut q = vec![Q40Block::default(); f.len() / 32];
                quantize_q40(backend, f, &mut q);
                q
            };
            let quant80 = |_: Isa, f: &[f32]| {
                let mut q = vec![Q80Block::default(); f.len() / 32];
                quantize_q80(backend, f, &mut q);
                q
            };
            let (d, nb, batch, w, x) = q40_inputs(isa, tag, index, &quant40, &quant80);
            let order = matmul_order(
                backend,
                batch,
                nb * 32,
                FloatType::Q40,
                FloatType::Q80,
                true,
            )
            .unwrap();
            let mut out = vec![0.0f32; d * batch];
            matmul_q80_q40(backend, order, &mut rows(&mut out, d), &x, &w, nb * 32);
            bytemuck::cast_slice(&out).to_vec()
        }
        other => panic!("unknown record {other}"),
    }
}

#[test]
fn emulations_match_every_dllama_build() {
    for isa in Isa::ALL {
        check_file(isa, "emulation", &|tag, index| emulated(isa, tag, index));
    }
}

#[test]
fn backends_match_their_dllama_build() {
    for backend in Backend::all_supported() {
        check_file(backend.isa(), "backend", &|tag, index| {
            with_backend(backend, tag, index)
        });
    }
}

/// Row subsets, single items and odd splits give the same bits as the whole call: the executor
/// may cut rows and batch items anywhere.
#[test]
fn any_split_of_rows_and_items_gives_the_same_bits() {
    for backend in Backend::all_supported() {
        for &(d, nb, batch) in &Q40_CASES {
            let (w, x) = q40_case_inputs(d, nb, batch);
            for order in [
                airllama_kernels::matmul::MatmulOrder::Row,
                airllama_kernels::matmul::MatmulOrder::TinyBlas,
            ] {
                let mut whole = vec![0.0f32; d * batch];
                matmul_q80_q40(backend, order, &mut rows(&mut whole, d), &x, &w, nb * 32);
                for split in 1..d {
                    for b in 0..batch {
                        let mut part = vec![0.0f32; d];
                        let (lo, hi) = part.split_at_mut(split);
                        let xb = &x[b * nb..(b + 1) * nb];
                        matmul_q80_q40(backend, order, &mut [lo], xb, &w[..split * nb], nb * 32);
                        matmul_q80_q40(backend, order, &mut [hi], xb, &w[split * nb..], nb * 32);
                        assert_eq!(
                            bits(&part),
                            bits(&whole[b * d..(b + 1) * d]),
                            "{backend:?} {order:?} {d} {nb} {batch}"
                        );
                    }
                }
            }
        }
    }
}
