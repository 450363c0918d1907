//! GGUF reader tests on files built by the hand-written writer in `gguf_common`.
mod gguf_common;

use airllama_io::gguf::{
    GgmlType, GgufArray, GgufError, GgufFile, GgufHeader, GgufValue, MAX_ARRAY_LEN, fuzz_header,
};
use gguf_common::*;

fn every_metadata_type() -> GgufBuilder {
    let mut g = GgufBuilder::default();
    g.raw("u8", T_U8, vec![200])
        .raw("i8", T_I8, vec![0xfe])
        .raw("u16", T_U16, 65000u16.to_le_bytes().to_vec())
        .raw("i16", T_I16, (-3000i16).to_le_bytes().to_vec())
        .u32("u32", 4_000_000_000)
        .raw("i32", T_I32, (-7i32).to_le_bytes().to_vec())
        .f32("f32", 1.5)
        .bool("bool", true)
        .str("string", "héllo")
        .raw("u64", T_U64, u64::MAX.to_le_bytes().to_vec())
        .raw("i64", T_I64, i64::MIN.to_le_bytes().to_vec())
        .raw("f64", T_F64, 0.1f64.to_le_bytes().to_vec())
        .str_array("strings", &["a", "", "ccc"])
        .i32_array("ints", &[1, -2, 3])
        .f32_array("floats", &[0.5, -0.25])
        .array("bools", T_BOOL, 2, vec![1, 0])
        .array("empty", T_U64, 0, vec![]);
    // An array of two arrays of u16.
    let mut nested = Vec::new();
    for vals in [[1u16, 2], [3, 4]] {
        nested.extend_from_slice(&T_U16.to_le_bytes());
        nested.extend_from_slice(&2u64.to_le_bytes());
        for v in vals {
            nested.extend_from_slice(&v.to_le_bytes());
        }
    }
    g.array("nested", T_ARRAY, 2, nested);
    g
}

#[test]
fn metadata_of_every_type() {
    let bytes = every_metadata_type().build();
    let h = GgufHeader::parse(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.get("u8"), Some(&GgufValue::U8(200)));
    assert_eq!(h.get("i8"), Some(&GgufValue::I8(-2)));
    assert_eq!(h.get("u16"), Some(&GgufValue::U16(65000)));
    assert_eq!(h.get("i16"), Some(&GgufValue::I16(-3000)));
    assert_eq!(h.get("u32").unwrap().as_u64(), Some(4_000_000_000));
    assert_eq!(h.get("i32"), Some(&GgufValue::I32(-7)));
    assert_eq!(h.get("i32").unwrap().as_u64(), None);
    assert_eq!(h.get("f32").unwrap().as_f64(), Some(1.5));
    assert_eq!(h.get("bool").unwrap().as_bool(), Some(true));
    assert_eq!(h.get("string").unwrap().as_str(), Some("héllo"));
    assert_eq!(h.get("u64"), Some(&GgufValue::U64(u64::MAX)));
    assert_eq!(h.get("i64"), Some(&GgufValue::I64(i64::MIN)));
    assert_eq!(h.get("f64"), Some(&GgufValue::F64(0.1)));
    assert_eq!(
        h.get("strings").unwrap().as_array(),
        Some(&GgufArray::String(vec![
            b"a".to_vec(),
            vec![],
            b"ccc".to_vec()
        ]))
    );
    assert_eq!(
        h.get("ints").unwrap().as_array().unwrap().to_i64s(),
        Some(vec![1, -2, 3])
    );
    assert_eq!(
        h.get("floats").unwrap().as_array().unwrap().to_f32s(),
        Some(vec![0.5, -0.25])
    );
    assert_eq!(
        h.get("bools").unwrap().as_array(),
        Some(&GgufArray::Bool(vec![true, false]))
    );
    assert_eq!(
        h.get("empty").unwrap().as_array(),
        Some(&GgufArray::U64(vec![]))
    );
    assert_eq!(
        h.get("nested").unwrap().as_array(),
        Some(&GgufArray::Array(vec![
            GgufArray::U16(vec![1, 2]),
            GgufArray::U16(vec![3, 4])
        ]))
    );
    assert!(h.tensors.is_empty());
    assert_eq!(h.data_offset % 32, 0);
    // The library's encoder writes the same bytes as the hand-written writer.
    assert_eq!(h.encode(), bytes);
}

/// Each supported tensor type dequantizes to the values its block layout defines.
#[test]
fn tensor_types_dequantize_by_their_layout() {
    let mut codes = [0u8; 32];
    for (j, c) in codes.iter_mut().enumerate() {
        *c = (j % 16) as u8;
    }
    let qs: [i8; 32] = std::array::from_fn(|j| j as i8 * 4 - 64);
    let mut g = GgufBuilder {
        alignment: 64,
        ..Default::default()
    };
    g.u32("general.alignment", 64)
        .tensor("f32", &[4], G_F32, f32_data(&[1.0, -2.5, 3.25, 0.0]))
        .tensor("f16", &[2, 2], G_F16, f16_data(&[0.5, -1.0, 65504.0, 1e-3]))
        .tensor("bf16", &[2], G_BF16, bf16_data(&[1.0, -3.0]))
        .tensor("q4_0", &[32], G_Q4_0, q4_0_block(0.5, &codes))
        .tensor("q4_1", &[32], G_Q4_1, q4_1_block(0.25, -1.0, &codes))
        .tensor(
            "q8_0",
            &[32, 2],
            G_Q8_0,
            [q8_0_block(0.125, &qs), q8_0_block(-2.0, &qs)].concat(),
        )
        .tensor("iq2_xxs", &[256], 16, vec![0; 66]);
    let path = temp_path("types.gguf");
    std::fs::write(&path, g.build()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let h = file.header();
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_offset % 64, 0);
    let read = |name: &str| {
        let t = h.tensor(name).unwrap();
        let mut out = vec![0f32; t.n_elements as usize];
        file.dequantize_range(t, 0, &mut out).unwrap();
        out
    };
    assert_eq!(read("f32"), [1.0, -2.5, 3.25, 0.0]);
    let f16s = read("f16");
    assert_eq!(f16s[..3], [0.5, -1.0, 65504.0]);
    assert!((f16s[3] - 1e-3).abs() < 1e-6);
    assert_eq!(read("bf16"), [1.0, -3.0]);
    let q40 = read("q4_0");
    for (j, v) in q40.iter().enumerate() {
        assert_eq!(*v, ((j % 16) as f32 - 8.0) * 0.5, "q4_0 value {j}");
    }
    let q41 = read("q4_1");
    for (j, v) in q41.iter().enumerate() {
        assert_eq!(*v, (j % 16) as f32 * 0.25 - 1.0, "q4_1 value {j}");
    }
    let q80 = read("q8_0");
    for j in 0..32 {
        assert_eq!(q80[j], qs[j] as f32 * 0.125);
        assert_eq!(q80[32 + j], qs[j] as f32 * -2.0);
    }
    // A sub-range on block boundaries; and one that is not.
    let t = h.tensor("q8_0").unwrap();
    let mut second = vec![0f32; 32];
    file.dequantize_range(t, 32, &mut second).unwrap();
    assert_eq!(second, q80[32..]);
    assert!(matches!(
        file.dequantize_range(t, 16, &mut second),
        Err(GgufError::BadRange { .. })
    ));
    // IQ2_XXS's layout is known (so its extent is checked) but it is not dequantized.
    let k = h.tensor("iq2_xxs").unwrap();
    assert_eq!(k.n_bytes, Some(66));
    assert_eq!(k.ty, GgmlType::IQ2_XXS);
    let mut out = vec![0f32; 256];
    assert!(matches!(
        file.dequantize_range(k, 0, &mut out),
        Err(GgufError::UnsupportedTensorType { .. })
    ));
    assert_eq!(
        file.tensor_data(h.tensor("q4_1").unwrap()).unwrap().len(),
        20
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = tiny_llama().build();
    let header_end = GgufHeader::parse(&bytes).unwrap().data_offset as usize;
    // Cutting inside the metadata or tensor infos fails to parse; cutting in the padding or
    // data parses the header, and then the tensor extents no longer fit.
    for n in (0..bytes.len()).filter(|n| *n < header_end + 64 || n % 97 == 0) {
        match GgufHeader::parse(&bytes[..n]) {
            Err(_) => {}
            Ok(h) => {
                assert!(n + 32 > header_end, "prefix {n} parsed");
                assert!(
                    h.check_extents(n as u64).is_err(),
                    "prefix {n}: extents fit"
                );
            }
        }
    }
    let path = temp_path("truncated.gguf");
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(matches!(
        GgufFile::open(&path),
        Err(GgufError::BadTensorExtent { .. })
    ));
}

#[test]
fn malformed_headers_get_typed_errors() {
    let good = every_metadata_type().build();
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(
        GgufHeader::parse(&bad),
        Err(GgufError::BadMagic(_))
    ));
    let mut v1 = good.clone();
    v1[4] = 1;
    assert!(matches!(
        GgufHeader::parse(&v1),
        Err(GgufError::UnsupportedVersion(1))
    ));
    let mut big_endian = good.clone();
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(
        GgufHeader::parse(&big_endian),
        Err(GgufError::UnsupportedVersion(_))
    ));

    // Counts far beyond the file are refused before allocating.
    let mut huge_kv = good.clone();
    huge_kv[16..24].copy_from_slice(&(1u64 << 15).to_le_bytes());
    assert!(matches!(
        GgufHeader::parse(&huge_kv),
        Err(GgufError::Truncated { .. })
    ));
    let mut huge_tensors = good.clone();
    huge_tensors[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        GgufHeader::parse(&huge_tensors),
        Err(GgufError::LimitExceeded { .. })
    ));

    let mut g = GgufBuilder::default();
    g.array("a", T_U8, (MAX_ARRAY_LEN + 1) as usize, vec![]);
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::LimitExceeded { .. })
    ));
    let mut g = GgufBuilder::default();
    g.array("a", T_U32, 1000, vec![0; 16]);
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::Truncated { .. })
    ));
    let mut g = GgufBuilder::default();
    g.raw(
        "s",
        T_STRING,
        [u64::MAX.to_le_bytes().to_vec(), b"x".to_vec()].concat(),
    );
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::LimitExceeded { .. })
    ));
    let mut g = GgufBuilder::default();
    g.raw("t", 13, vec![0; 8]);
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::BadValueType(13))
    ));
    let mut g = GgufBuilder::default();
    g.raw("b", T_BOOL, vec![2]);
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::BadBool(2))
    ));
    let mut g = GgufBuilder::default();
    g.u32("ka", 1).u32("kb", 2);
    let mut dup = g.build();
    let at = dup.windows(2).position(|w| w == b"kb").unwrap();
    dup[at + 1] = b'a';
    assert!(matches!(GgufHeader::parse(&dup), Err(GgufError::DuplicateKey(k)) if k == "ka"));
    let mut g = GgufBuilder::default();
    g.u32("general.alignment", 48);
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::BadAlignment)
    ));

    // Nesting deeper than the limit.
    let mut deep = Vec::new();
    for _ in 0..5 {
        deep = [
            T_ARRAY.to_le_bytes().to_vec(),
            1u64.to_le_bytes().to_vec(),
            deep,
        ]
        .concat();
    }
    let mut g = GgufBuilder::default();
    g.raw(
        "deep",
        T_ARRAY,
        [
            deep,
            T_U8.to_le_bytes().to_vec(),
            0u64.to_le_bytes().to_vec(),
        ]
        .concat(),
    );
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::LimitExceeded { .. })
    ));

    // Tensor shapes and extents.
    let mut g = GgufBuilder::default();
    g.tensor("odd", &[33], G_Q4_0, vec![0; 18]);
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::BadShape { .. })
    ));
    let mut g = GgufBuilder::default();
    g.tensor("zero", &[0, 4], G_F32, vec![]);
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::BadShape { .. })
    ));
    let mut g = GgufBuilder::default();
    g.tensor("overflow", &[u64::MAX, 4], G_F32, vec![]);
    assert!(matches!(
        GgufHeader::parse(&g.build()),
        Err(GgufError::BadShape { .. })
    ));
    let mut g = GgufBuilder::default();
    g.tensor("big", &[1 << 40], G_F32, vec![0; 4]);
    let h = GgufHeader::parse(&g.build()).unwrap();
    assert!(matches!(
        h.check_extents(1 << 20),
        Err(GgufError::BadTensorExtent { .. })
    ));
    let mut g = GgufBuilder::default();
    g.tensor("a", &[8], G_F32, vec![0; 32])
        .tensor("b", &[8], G_F32, vec![0; 32]);
    let mut unaligned = g.build();
    let at = unaligned.windows(1).rposition(|w| w == b"b").unwrap();
    // b's offset field sits after name, n_dims, one dim and the type.
    let off = at + 1 + 4 + 8 + 4;
    unaligned[off..off + 8].copy_from_slice(&33u64.to_le_bytes());
    assert!(matches!(
        GgufHeader::parse(&unaligned),
        Err(GgufError::BadTensorExtent { .. })
    ));
}

/// The fuzz oracle over valid files and deterministic corruptions of them.
#[test]
fn fuzz_oracle_over_seeds_and_mutations() {
    let seeds = [every_metadata_type().build(), tiny_llama().build()];
    let mut rng = Lcg(99);
    for seed in &seeds {
        fuzz_header(seed);
        for _ in 0..1000 {
            let mut m = seed.clone();
            for _ in 0..1 + rng.next_u32() % 4 {
                let at = rng.next_u32() as usize % m.len();
                m[at] = rng.next_u32() as u8;
            }
            if rng.next_u32().is_multiple_of(4) {
                m.truncate(rng.next_u32() as usize % m.len());
            }
            fuzz_header(&m);
        }
    }
}

/// The fuzz target's committed seed corpus passes the oracle.
#[test]
fn fuzz_corpus_passes_the_oracle() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/gguf");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        fuzz_header(&bytes);
        n += 1;
    }
    assert!(n >= 2, "seed corpus missing in {dir}");
}
