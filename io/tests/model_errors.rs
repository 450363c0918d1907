//! Every error kind of the `.m` header and the layout, provoked by cutting, extending or
//! corrupting a golden model in memory (or, for node-split checks that no golden model fails,
//! a small model written with [`ModelParams`]).
#[macro_use]
#[path = "../../tests/golden_support/mod.rs"]
mod golden_support;

use airllama_io::layout::{LayoutError, ModelLayout, TensorRole};
use airllama_io::model::{
    ArchType, HeaderKey, HiddenAct, MAX_HEADER_SIZE, ModelHeader, ModelHeaderError, ModelParams,
    NormEpsilon, ReadModelHeaderError,
};
use airllama_kernels::block::FloatType;

fn golden_model(variant: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden/");
    std::fs::read(format!("{path}{variant}/model.m")).unwrap()
}

/// Byte offset of the value of `key` in a golden header.
fn value_offset(bytes: &[u8], key: HeaderKey) -> usize {
    let header = ModelHeader::parse(bytes).unwrap();
    let i = header.pairs().iter().position(|&(k, _)| k == key).unwrap();
    8 + 8 * i + 4
}

fn set_i32(bytes: &mut [u8], at: usize, value: i32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn with_value(variant: &str, key: HeaderKey, value: i32) -> Vec<u8> {
    let mut bytes = golden_model(variant);
    let at = value_offset(&bytes, key);
    set_i32(&mut bytes, at, value);
    bytes
}

fn parse_err(bytes: &[u8]) -> ModelHeaderError {
    ModelHeader::parse(bytes).unwrap_err()
}

#[test]
fn truncated_header() {
    golden_or_skip!();
    let bytes = golden_model("llama-q40");
    for len in [0, 3, 4, 7] {
        assert!(
            matches!(parse_err(&bytes[..len]), ModelHeaderError::Truncated { .. }),
            "{len}"
        );
    }
    assert_eq!(
        parse_err(&bytes[..100]),
        ModelHeaderError::Truncated {
            needed: 128,
            available: 100
        }
    );
    // The stream reader reports the early end as I/O.
    assert!(matches!(
        ModelHeader::read_from(&mut &bytes[..100]),
        Err(ReadModelHeaderError::Io(_))
    ));
    assert!(ModelHeader::read_from(&mut &bytes[..128]).is_ok());
}

#[test]
fn magic() {
    golden_or_skip!();
    for old in [0xABCD00, 0xABCD01] {
        let mut bytes = golden_model("llama-q40");
        set_i32(&mut bytes, 0, old);
        let err = parse_err(&bytes);
        assert_eq!(err, ModelHeaderError::OldFormat { magic: old as u32 });
        let text = err.to_string();
        assert!(
            text.contains("0xABCD00") && text.contains("0xABCD01"),
            "{text}"
        );
    }
    let mut bytes = golden_model("llama-q40");
    set_i32(&mut bytes, 0, 0x567124); // a tokenizer file
    assert_eq!(
        parse_err(&bytes),
        ModelHeaderError::UnsupportedMagic { magic: 0x567124 }
    );
}

#[test]
fn header_size() {
    golden_or_skip!();
    for size in [-8, 0, 4, 12, 130, MAX_HEADER_SIZE as i32 + 8, i32::MAX] {
        let mut bytes = golden_model("llama-q40");
        set_i32(&mut bytes, 4, size);
        assert_eq!(
            parse_err(&bytes),
            ModelHeaderError::InvalidHeaderSize { size },
            "{size}"
        );
    }
    // A header of only magic and size is well formed, but says nothing: no weight type.
    let mut bytes = golden_model("llama-q40");
    set_i32(&mut bytes, 4, 8);
    assert_eq!(parse_err(&bytes), ModelHeaderError::MissingWeightType);
}

#[test]
fn unknown_key() {
    golden_or_skip!();
    let mut bytes = golden_model("qwen3-q40");
    set_i32(&mut bytes, 8 + 8 * 3, 22);
    assert_eq!(
        parse_err(&bytes),
        ModelHeaderError::UnknownKey {
            key: 22,
            offset: 32
        }
    );
    set_i32(&mut bytes, 8 + 8 * 3, -1);
    assert_eq!(
        parse_err(&bytes),
        ModelHeaderError::UnknownKey {
            key: -1,
            offset: 32
        }
    );
}

#[test]
fn weight_type() {
    golden_or_skip!();
    // Replacing the weight type key by a second version key leaves no weight type.
    let mut bytes = golden_model("llama-q40");
    let at = value_offset(&bytes, HeaderKey::WeightFloatType);
    set_i32(&mut bytes, at - 4, HeaderKey::Version.code());
    assert_eq!(parse_err(&bytes), ModelHeaderError::MissingWeightType);
    // -1 is dllama's F_UNK: the same.
    let bytes = with_value("llama-q40", HeaderKey::WeightFloatType, -1);
    assert_eq!(parse_err(&bytes), ModelHeaderError::MissingWeightType);
    let bytes = with_value("llama-q40", HeaderKey::WeightFloatType, 4);
    assert_eq!(
        parse_err(&bytes),
        ModelHeaderError::UnsupportedWeightType { code: 4 }
    );
}

#[test]
fn epsilon() {
    golden_or_skip!();
    let bytes = with_value("qwen3-q40", HeaderKey::NormEpsilon, 7);
    let err = parse_err(&bytes);
    assert_eq!(err, ModelHeaderError::UnsupportedEpsilon { code: 7 });
    assert!(err.to_string().contains("1e-6"));
    let bytes = with_value("qwen3-q40", HeaderKey::NormEpsilon, 5);
    let header = ModelHeader::parse(&bytes).unwrap();
    assert_eq!(header.config().norm_epsilon, NormEpsilon::E5);
}

#[test]
fn zero_and_invalid_values() {
    golden_or_skip!();
    for (key, field) in [
        (HeaderKey::Dim, "dim"),
        (HeaderKey::NLayers, "n_layers"),
        (HeaderKey::NHeads, "n_heads"),
        (HeaderKey::NKvHeads, "n_kv_heads"),
        (HeaderKey::VocabSize, "vocab_size"),
        (HeaderKey::SeqLen, "seq_len"),
        (HeaderKey::HiddenDim, "hidden_dim"),
    ] {
        let bytes = with_value("llama-q40", key, 0);
        assert_eq!(
            parse_err(&bytes),
            ModelHeaderError::ZeroDim { field },
            "{key}"
        );
    }
    for (key, field) in [
        (HeaderKey::NExperts, "n_experts"),
        (HeaderKey::NActiveExperts, "n_active_experts"),
        (HeaderKey::MoeHiddenDim, "moe_hidden_dim"),
    ] {
        let bytes = with_value("qwen3moe-q40", key, 0);
        assert_eq!(
            parse_err(&bytes),
            ModelHeaderError::ZeroDim { field },
            "{key}"
        );
    }
    for key in [
        HeaderKey::Dim,
        HeaderKey::NLayers,
        HeaderKey::HeadDim,
        HeaderKey::SeqLen,
    ] {
        let variant = if key == HeaderKey::HeadDim {
            "qwen3-q40"
        } else {
            "llama-q40"
        };
        let bytes = with_value(variant, key, -5);
        assert_eq!(
            parse_err(&bytes),
            ModelHeaderError::InvalidValue { key, value: -5 }
        );
    }
    for (key, value) in [(HeaderKey::ArchType, 0xABCD03), (HeaderKey::HiddenAct, 2)] {
        let bytes = with_value("llama-q40", key, value);
        assert_eq!(
            parse_err(&bytes),
            ModelHeaderError::InvalidValue { key, value }
        );
    }
}

#[test]
fn inconsistent_dims() {
    golden_or_skip!();
    let cases = [
        ("llama-q40", HeaderKey::NHeads, 7),   // 192 % 7 and no head_dim
        ("llama-q40", HeaderKey::NKvHeads, 5), // 12 % 5
        ("qwen3moe-q40", HeaderKey::NActiveExperts, 5), // > 4 experts
        ("llama-q40", HeaderKey::NExperts, 2), // experts without the MoE arch
    ];
    for (variant, key, value) in cases {
        let bytes = with_value(variant, key, value);
        assert!(
            matches!(parse_err(&bytes), ModelHeaderError::InconsistentDims { .. }),
            "{variant} {key} = {value}"
        );
    }
    // With an explicit head_dim, 6 heads are fine for the header, but the file no longer
    // matches: 6 × 32 rows of q instead of 12 × 32.
    let bytes = with_value("qwen3-q40", HeaderKey::NHeads, 6);
    let header = ModelHeader::parse(&bytes).unwrap();
    assert_eq!(header.config().q_dim, 192);
    assert!(matches!(
        ModelLayout::new(&header, bytes.len() as u64),
        Err(LayoutError::FileTooLong { .. })
    ));
}

#[test]
fn file_shorter_or_longer_than_the_header_implies() {
    golden_or_skip!();
    let bytes = golden_model("qwen3moe-q40");
    let header = ModelHeader::parse(&bytes).unwrap();
    let len = bytes.len() as u64;
    assert!(ModelLayout::new(&header, len).is_ok());
    assert_eq!(
        ModelLayout::new(&header, len - 1),
        Err(LayoutError::FileTooShort {
            expected: len,
            actual: len - 1
        })
    );
    assert_eq!(
        ModelLayout::new(&header, len + 1),
        Err(LayoutError::FileTooLong {
            expected: len,
            actual: len + 1
        })
    );
    // A header alone is far too short.
    assert!(matches!(
        ModelLayout::new(&header, header.header_size()),
        Err(LayoutError::FileTooShort { .. })
    ));
    let text = ModelLayout::new(&header, len + 1).unwrap_err().to_string();
    assert!(text.contains("longer"), "{text}");
    // More layers than the file holds.
    let bytes = with_value("qwen3moe-q40", HeaderKey::NLayers, 5);
    let header = ModelHeader::parse(&bytes).unwrap();
    assert!(matches!(
        ModelLayout::new(&header, bytes.len() as u64),
        Err(LayoutError::FileTooShort { .. })
    ));
}

#[test]
fn sizes_beyond_u64_or_the_tensor_cap() {
    golden_or_skip!();
    let mut bytes = golden_model("llama-f32");
    for (key, value) in [
        (HeaderKey::VocabSize, i32::MAX),
        (HeaderKey::Dim, i32::MAX),
        (HeaderKey::NHeads, 1),
        (HeaderKey::NKvHeads, 1),
    ] {
        let at = value_offset(&golden_model("llama-f32"), key);
        set_i32(&mut bytes, at, value);
    }
    let header = ModelHeader::parse(&bytes).unwrap();
    assert_eq!(
        ModelLayout::new(&header, bytes.len() as u64),
        Err(LayoutError::TooLarge)
    );
    let bytes = with_value("qwen3moe-q40", HeaderKey::NExperts, i32::MAX);
    let header = ModelHeader::parse(&bytes).unwrap();
    assert_eq!(
        ModelLayout::new(&header, bytes.len() as u64),
        Err(LayoutError::TooLarge)
    );
}

/// A small model and a file size matching it.
fn small_model(params: ModelParams) -> (ModelHeader, u64) {
    let header = params.to_header().unwrap();
    let size = match ModelLayout::new(&header, 0) {
        Err(LayoutError::FileTooShort { expected, .. }) => expected,
        other => panic!("{other:?}"),
    };
    (header, size)
}

fn params(weight_type: FloatType, dim: u32, n_heads: u32, n_kv_heads: u32) -> ModelParams {
    ModelParams {
        arch: ArchType::Llama,
        hidden_act: HiddenAct::Silu,
        dim,
        hidden_dim: 64,
        n_layers: 2,
        n_heads,
        n_kv_heads,
        weight_type,
        seq_len: 16,
        vocab_size: 12,
        n_experts: 0,
        n_active_experts: 0,
        rope_theta: None,
        rope_scaling: None,
        head_dim: None,
        norm_epsilon: None,
        moe_hidden_dim: None,
    }
}

#[test]
fn quantized_rows_must_be_whole_blocks() {
    let header = params(FloatType::Q40, 48, 4, 4).to_header().unwrap();
    assert_eq!(
        ModelLayout::new(&header, 1 << 20),
        Err(LayoutError::RowNotBlockAligned {
            role: TensorRole::Q,
            cols: 48,
            block: 32,
            float_type: FloatType::Q40
        })
    );
}

#[test]
fn node_split_errors() {
    golden_or_skip!();
    // The golden models: 6 kv heads do not split over 4 or 5 nodes.
    let bytes = golden_model("llama-q40");
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    assert_eq!(layout.node_split(0).unwrap_err(), LayoutError::ZeroNodes);
    assert_eq!(
        layout.node_split(4).unwrap_err(),
        LayoutError::NotDivisible {
            what: "n_kv_heads",
            value: 6,
            n_nodes: 4
        }
    );
    assert!(matches!(
        layout.node_split(5),
        Err(LayoutError::NotDivisible {
            what: "n_heads",
            ..
        })
    ));
    // 6 nodes: q_dim 192 / 6 = 32 values per wo column slice (one block), kv 96 / 6 = 16.
    assert!(layout.node_split(6).is_ok());
    // 12 nodes: 12 kv heads needed.
    assert!(layout.node_split(12).is_err());

    // Q40, dim 64, 4 heads: over 4 nodes each wo column slice would be 16 values, half a block.
    let (header, size) = small_model(params(FloatType::Q40, 64, 4, 4));
    let layout = ModelLayout::new(&header, size).unwrap();
    assert!(layout.node_split(2).is_ok());
    assert_eq!(
        layout.node_split(4).unwrap_err(),
        LayoutError::SliceNotBlockAligned {
            role: TensorRole::Wo,
            slice_cols: 16,
            block: 32,
            n_nodes: 4
        }
    );
    // F32 has no blocks: the same split is fine.
    let (header, size) = small_model(params(FloatType::F32, 64, 4, 4));
    assert!(
        ModelLayout::new(&header, size)
            .unwrap()
            .node_split(4)
            .is_ok()
    );

    // Head dim 3: q_dim 6 splits over 2 nodes as 3 + 3, which cuts a RoPE pair.
    let (header, size) = small_model(params(FloatType::F32, 6, 2, 2));
    let layout = ModelLayout::new(&header, size).unwrap();
    assert_eq!(
        layout.node_split(2).unwrap_err(),
        LayoutError::OddRopeSlice {
            what: "q_dim",
            value: 3,
            n_nodes: 2
        }
    );

    // Feed-forward and vocabulary must divide too.
    let mut p = params(FloatType::F32, 64, 4, 4);
    p.hidden_dim = 66;
    let (header, size) = small_model(p);
    let layout = ModelLayout::new(&header, size).unwrap();
    assert!(matches!(
        layout.node_split(4),
        Err(LayoutError::NotDivisible {
            what: "ffn_dim",
            ..
        })
    ));
    let mut p = params(FloatType::F32, 64, 4, 4);
    p.vocab_size = 10;
    let (header, size) = small_model(p);
    let layout = ModelLayout::new(&header, size).unwrap();
    assert!(matches!(
        layout.node_split(4),
        Err(LayoutError::NotDivisible {
            what: "vocab_size",
            ..
        })
    ));
}

#[test]
fn params_round_trip_through_a_golden_header() {
    golden_or_skip!();
    // The golden qwen3moe header, rebuilt from params, describes the same model (the golden
    // files put norm_epsilon before head_dim; convert-hf.py's order is the other way round).
    let bytes = golden_model("qwen3moe-q40");
    let golden = ModelHeader::parse(&bytes).unwrap();
    let c = *golden.config();
    let params = ModelParams {
        arch: c.arch,
        hidden_act: c.hidden_act,
        dim: c.dim,
        hidden_dim: c.hidden_dim,
        n_layers: c.n_layers,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        weight_type: c.weight_type,
        seq_len: c.seq_len,
        vocab_size: c.vocab_size,
        n_experts: c.n_experts,
        n_active_experts: c.n_active_experts,
        rope_theta: Some(10000),
        rope_scaling: None,
        head_dim: Some(c.head_dim),
        norm_epsilon: Some(c.norm_epsilon),
        moe_hidden_dim: Some(c.moe_hidden_dim),
    };
    let header = params.to_header().unwrap();
    assert_eq!(header.config(), golden.config());
    assert_eq!(header.header_size(), golden.header_size());
    let encoded = header.encode();
    let reparsed = ModelHeader::parse(&encoded).unwrap();
    assert_eq!(reparsed, header);
    let mut sorted_golden = golden.pairs().to_vec();
    let mut sorted_new = header.pairs().to_vec();
    sorted_golden.sort();
    sorted_new.sort();
    assert_eq!(sorted_golden, sorted_new);
    // The writer puts the keys in convert-hf.py's order.
    let keys: Vec<_> = header.pairs().iter().map(|&(k, _)| k.code()).collect();
    assert_eq!(
        keys,
        [0, 1, 11, 2, 3, 4, 5, 6, 13, 10, 9, 7, 8, 12, 19, 20, 21]
    );
    let mut file = Vec::new();
    header.write_to(&mut file).unwrap();
    assert_eq!(file, encoded);
}
