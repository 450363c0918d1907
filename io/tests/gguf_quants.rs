//! Every ggml type airllama dequantizes, compared bit for bit with the reference
//! dequantization of the PyPI `gguf` package (`gguf.quants.dequantize`) on random blocks that
//! `io/tests/py/quants_reference.py` writes into a GGUF file together with their reference
//! values. Prints SKIPPED when no Python with `gguf` and numpy is found (see `pygguf`).
mod gguf_common;
mod pygguf;

use std::collections::BTreeSet;

use airllama_io::gguf::{GgmlType, GgufError, GgufFile};
use gguf_common::temp_path;

fn reference_file(seed: u32) -> Option<GgufFile> {
    let path = temp_path(&format!("quants-{seed}.gguf"));
    let path_str = path.to_str().unwrap();
    match pygguf::run_script("quants_reference.py", &[path_str, &seed.to_string()]) {
        Ok(out) => print!("{out}"),
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return None;
        }
    }
    Some(GgufFile::open(&path).unwrap())
}

fn check_against_reference(gguf: &GgufFile) -> BTreeSet<u32> {
    let h = gguf.header();
    let mut checked = BTreeSet::new();
    for t in h.tensors.iter().filter(|t| !t.name.ends_with(".ref")) {
        let reference = h.tensor(&format!("{}.ref", t.name)).unwrap();
        assert_eq!(reference.dims, t.dims, "{}", t.name);
        let mut want = vec![0f32; reference.n_elements as usize];
        gguf.dequantize_range(reference, 0, &mut want).unwrap();
        let mut got = vec![0f32; t.n_elements as usize];
        if !t.ty.can_dequantize() {
            let err = gguf.dequantize_range(t, 0, &mut got).unwrap_err();
            assert!(matches!(err, GgufError::UnsupportedTensorType { ty, .. } if ty == t.ty));
            assert!(
                err.to_string().contains(&t.ty.name()) && !t.ty.name().starts_with("type"),
                "{err}"
            );
            println!("{}: refused by name ({err})", t.name);
            continue;
        }
        // In pieces of two blocks' worth of rows too: a range inside the tensor reads the same.
        gguf.dequantize_range(t, 0, &mut got).unwrap();
        let mismatches: Vec<usize> = (0..got.len())
            .filter(|&i| got[i].to_bits() != want[i].to_bits())
            .collect();
        assert!(
            mismatches.is_empty(),
            "{} ({}): {} of {} values differ from gguf.quants.dequantize, first at {}: {} vs {}",
            t.name,
            t.ty,
            mismatches.len(),
            got.len(),
            mismatches[0],
            got[mismatches[0]],
            want[mismatches[0]]
        );
        let (block, _) = t.ty.block_layout().unwrap();
        let start = t.row_len() * 3;
        let mut part = vec![0f32; (2 * block) as usize];
        gguf.dequantize_range(t, start, &mut part).unwrap();
        assert_eq!(part, got[start as usize..start as usize + part.len()]);
        println!(
            "{}: {} values ({} blocks) bit-identical",
            t.name,
            got.len(),
            t.n_elements / block
        );
        checked.insert(t.ty.0);
    }
    checked
}

#[test]
fn every_type_matches_gguf_package_bit_for_bit() {
    for seed in [1, 2] {
        let Some(gguf) = reference_file(seed) else {
            return;
        };
        let checked = check_against_reference(&gguf);
        // Every type the reader claims to dequantize was checked (F32 is the reference itself).
        let claimed: BTreeSet<u32> = GgmlType::DEQUANTIZABLE
            .iter()
            .map(|t| t.0)
            .filter(|&t| t != GgmlType::F32.0)
            .collect();
        assert_eq!(checked, claimed, "types without a reference check");
    }
}

/// Every ggml type code has its ggml name (or says it is not one), and the types llama.cpp's
/// quantizer writes are the ones dequantized, IQ1/IQ2/IQ3 aside.
#[test]
fn types_are_named_as_ggml_names_them() {
    let names: Vec<(u32, String)> = (0..42).map(|c| (c, GgmlType(c).name())).collect();
    for (code, name) in [
        (6, "q5_0"),
        (7, "q5_1"),
        (10, "q2_K"),
        (14, "q6_K"),
        (16, "iq2_xxs"),
        (17, "iq2_xs"),
        (18, "iq3_xxs"),
        (19, "iq1_s"),
        (20, "iq4_nl"),
        (21, "iq3_s"),
        (22, "iq2_s"),
        (23, "iq4_xs"),
        (29, "iq1_m"),
        (34, "tq1_0"),
        (35, "tq2_0"),
        (39, "mxfp4"),
    ] {
        assert_eq!(names[code as usize].1, name);
    }
    assert_eq!(GgmlType(99).name(), "type99");
    for ty in GgmlType::DEQUANTIZABLE {
        assert!(ty.block_layout().is_some(), "{ty}");
    }
    for code in [16, 17, 18, 19, 21, 22, 29] {
        assert!(!GgmlType(code).can_dequantize());
        assert!(GgmlType(code).block_layout().is_some());
    }
}
