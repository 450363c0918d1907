//! The `.m` header and tensor layout against the golden models in `../shared/golden`: header
//! values as the golden README lists them, the layout tiling each file, node slices covering
//! each split tensor once, and every weight record a real C++ root sent its workers equal, byte
//! for byte, to the slice the layout table gives that node.
#[macro_use]
#[path = "../../tests/golden_support/mod.rs"]
mod golden_support;

use std::path::{Path, PathBuf};

use airllama_io::fuzzing::{check_layout, check_node_split};
use airllama_io::layout::{ModelLayout, SplitKind, TensorRole};
use airllama_io::model::{ArchType, HiddenAct, ModelHeader, NormEpsilon, RopeKind};
use airllama_kernels::block::FloatType;

const VARIANTS: [&str; 4] = ["llama-q40", "llama-f32", "qwen3-q40", "qwen3moe-q40"];

fn golden() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden")).to_path_buf()
}

fn model_bytes(variant: &str) -> Vec<u8> {
    let path = golden().join(variant).join("model.m");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn layout_of(bytes: &[u8]) -> ModelLayout {
    let header = ModelHeader::parse(bytes).unwrap();
    ModelLayout::new(&header, bytes.len() as u64).unwrap()
}

/// The README's variant table, one row per model.
#[test]
fn header_values_match_the_readme() {
    golden_or_skip!();
    for variant in VARIANTS {
        let bytes = model_bytes(variant);
        let header = ModelHeader::parse(&bytes).unwrap();
        let c = header.config();
        // Common to all variants.
        assert_eq!(
            (c.dim, c.n_layers, c.n_heads, c.n_kv_heads),
            (192, 4, 12, 6),
            "{variant}"
        );
        assert_eq!(
            (c.vocab_size, c.seq_len, c.orig_seq_len),
            (288, 256, 256),
            "{variant}"
        );
        assert_eq!(c.hidden_act, HiddenAct::Silu);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.hidden_dim, 384);
        // The header re-encodes to exactly the bytes it came from.
        assert_eq!(
            header.encode(),
            bytes[..header.header_size() as usize],
            "{variant}"
        );
        let (arch, weight, head_dim, q_dim, kv_dim, rope, eps) = match variant {
            "llama-q40" => (
                ArchType::Llama,
                FloatType::Q40,
                16,
                192,
                96,
                RopeKind::Llama,
                5,
            ),
            "llama-f32" => (
                ArchType::Llama,
                FloatType::F32,
                16,
                192,
                96,
                RopeKind::Llama,
                5,
            ),
            "qwen3-q40" => (
                ArchType::Qwen3,
                FloatType::Q40,
                32,
                384,
                192,
                RopeKind::Falcon,
                6,
            ),
            "qwen3moe-q40" => (
                ArchType::Qwen3Moe,
                FloatType::Q40,
                32,
                384,
                192,
                RopeKind::Falcon,
                6,
            ),
            _ => unreachable!(),
        };
        assert_eq!(c.arch, arch, "{variant}");
        assert_eq!(c.weight_type, weight, "{variant}");
        assert_eq!(
            (c.head_dim, c.q_dim, c.kv_dim),
            (head_dim, q_dim, kv_dim),
            "{variant}"
        );
        assert_eq!(c.rope_type, rope, "{variant}");
        assert_eq!(c.norm_epsilon.code(), eps, "{variant}");
        assert_eq!(c.norm_epsilon.value(), if eps == 5 { 1e-5 } else { 1e-6 });
        if variant == "qwen3moe-q40" {
            assert_eq!(
                (c.n_experts, c.n_active_experts, c.moe_hidden_dim),
                (4, 2, 192)
            );
            assert_eq!(c.ffn_dim(), 192);
            assert!(c.is_moe());
        } else {
            assert_eq!((c.n_experts, c.n_active_experts), (0, 0));
            assert_eq!(c.ffn_dim(), 384);
            assert_eq!(c.norm_epsilon == NormEpsilon::E6, variant == "qwen3-q40");
        }
    }
}

#[test]
fn layout_covers_each_file_exactly() {
    golden_or_skip!();
    for variant in VARIANTS {
        let bytes = model_bytes(variant);
        let layout = layout_of(&bytes);
        let c = *layout.config();
        check_layout(&layout);
        let tensors = layout.tensors();
        assert_eq!(tensors[0].offset, layout.header_size());
        assert_eq!(
            tensors.last().unwrap().range().end,
            bytes.len() as u64,
            "{variant}"
        );
        for pair in tensors.windows(2) {
            assert_eq!(pair[0].range().end, pair[1].offset, "{variant}");
        }
        // Count and order of the tensors, independently of how the table builds them.
        let per_layer =
            4 + if c.is_moe() {
                1 + 3 * c.n_experts as usize
            } else {
                3
            } + if c.arch.has_qk_norm() { 2 } else { 0 }
                + 2;
        assert_eq!(tensors.len(), 3 + 4 * per_layer, "{variant}");
        assert_eq!(tensors[0].role, TensorRole::Embedding);
        assert_eq!(tensors[0].float_type, FloatType::F32);
        assert_eq!(tensors[0].size, 288 * 192 * 4);
        let roles: Vec<_> = layout
            .layer_tensors(2)
            .unwrap()
            .iter()
            .map(|t| t.role)
            .collect();
        use TensorRole::*;
        let expected: Vec<TensorRole> = match variant {
            "llama-q40" | "llama-f32" => {
                vec![Q, K, V, Wo, W1, W2, W3, AttentionNorm, FfnNorm]
            }
            "qwen3-q40" => vec![
                Q,
                K,
                V,
                Wo,
                W1,
                W2,
                W3,
                QNorm,
                KNorm,
                AttentionNorm,
                FfnNorm,
            ],
            _ => {
                let mut r = vec![Q, K, V, Wo, MoeGate];
                for _ in 0..4 {
                    r.extend([W1, W2, W3]);
                }
                r.extend([QNorm, KNorm, AttentionNorm, FfnNorm]);
                r
            }
        };
        assert_eq!(roles, expected, "{variant}");
        let n = tensors.len();
        assert_eq!(
            (tensors[n - 2].role, tensors[n - 1].role),
            (FinalNorm, Classifier)
        );
        assert_eq!(tensors[n - 1].float_type, c.weight_type);
        // Sizes of a Q40 q matrix: q_dim rows of dim/32 blocks of 18 bytes.
        let q = layout.find(Q, 3, None).unwrap();
        let row = if c.weight_type == FloatType::Q40 {
            192 / 32 * 18
        } else {
            192 * 4
        };
        assert_eq!(
            (q.rows, q.cols, q.size),
            (c.q_dim, 192, u64::from(c.q_dim) * row)
        );
        if c.is_moe() {
            let w2 = layout.find(W2, 1, Some(3)).unwrap();
            assert_eq!((w2.rows, w2.cols, w2.size), (192, 192, 192 * 6 * 18));
            let gate = layout.find(MoeGate, 1, None).unwrap();
            assert_eq!(
                (gate.rows, gate.cols, gate.float_type),
                (4, 192, FloatType::F32)
            );
        }
        // Layer ranges tile the span between the embedding and the final norm.
        let mut at = tensors[0].range().end;
        for layer in 0..4 {
            let r = layout.layer_range(layer).unwrap();
            assert_eq!(r.start, at);
            at = r.end;
        }
        assert_eq!(at, tensors[n - 2].offset);
        assert!(layout.layer_range(4).is_none());
    }
}

#[test]
fn node_slices_cover_each_split_tensor_once() {
    golden_or_skip!();
    for variant in VARIANTS {
        let bytes = model_bytes(variant);
        let layout = layout_of(&bytes);
        for n_nodes in 1..=3 {
            let split = layout.node_split(n_nodes).unwrap();
            check_node_split(&split);
            // Independently of the oracle: mark every byte each node's slices select.
            let mut seen = vec![0u8; bytes.len()];
            for node in 0..n_nodes {
                for s in split.node_slices(node) {
                    let t = &layout.tensors()[s.tensor];
                    for r in s.bytes.ranges() {
                        assert!(r.start >= t.offset && r.end <= t.range().end);
                        for b in &mut seen[r.start as usize..r.end as usize] {
                            *b += 1;
                        }
                    }
                }
            }
            for t in layout.tensors() {
                let want = match t.split() {
                    SplitKind::Rows | SplitKind::Columns | SplitKind::RootOnly => 1,
                    SplitKind::Replicated => n_nodes as u8,
                };
                let got = &seen[t.offset as usize..t.range().end as usize];
                assert!(
                    got.iter().all(|&c| c == want),
                    "{variant} N={n_nodes} {t:?}"
                );
            }
            // With one node every slice is the whole tensor, one range.
            if n_nodes == 1 {
                for s in split.node_slices(0) {
                    let t = &layout.tensors()[s.tensor];
                    assert!(s.bytes.is_contiguous());
                    assert_eq!((s.bytes.start, s.bytes.end()), (t.offset, t.range().end));
                }
            }
        }
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Every weight record the C++ root sent each worker (parsed from the recorded stream, and
/// matched to the manifest) equals the node's slices from the layout table, in the same order,
/// with the same op name, op index, offset field, size and bytes.
#[test]
fn node_slices_equal_the_weights_dllama_sent() {
    golden_or_skip!();
    let mut checked_records = 0usize;
    let mut checked_scenarios = 0usize;
    for variant in VARIANTS {
        let bytes = model_bytes(variant);
        let layout = layout_of(&bytes);
        let dir = golden().join(variant);
        let mut scenarios: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("manifest.json").is_file())
            .collect();
        scenarios.sort();
        assert!(scenarios.len() >= 2, "{variant}: no scenarios found");
        for scenario in scenarios {
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(scenario.join("manifest.json")).unwrap())
                    .unwrap();
            let n_nodes = manifest["n_nodes"].as_u64().unwrap() as u32;
            let split = layout.node_split(n_nodes).unwrap();
            for worker in 0..n_nodes - 1 {
                let node = worker + 1;
                let stream =
                    std::fs::read(scenario.join(format!("w{worker}_c0_root.to_worker.bin")))
                        .unwrap();
                let weights = &manifest["layout"][format!("worker{worker}")]["weights"];
                let records = weights["records"].as_array().unwrap();
                let slices: Vec<_> = split.node_slices(node).collect();
                let what = format!("{} worker {worker}", scenario.display());
                assert_eq!(records.len(), slices.len(), "{what}");
                let mut at = weights["offset"].as_u64().unwrap() as usize;
                for (record, slice) in records.iter().zip(&slices) {
                    let t = &layout.tensors()[slice.tensor];
                    // The record as it is on the wire.
                    assert_eq!(
                        record["record_offset"].as_u64().unwrap() as usize,
                        at,
                        "{what}"
                    );
                    let name_len = read_u32(&stream, at) as usize;
                    let name = &stream[at + 4..at + 4 + name_len];
                    assert_eq!(name.last(), Some(&0));
                    let name = std::str::from_utf8(&name[..name_len - 1]).unwrap();
                    at += 4 + name_len;
                    let (index, offset, n_bytes) = (
                        read_u32(&stream, at),
                        read_u64(&stream, at + 4),
                        read_u64(&stream, at + 12),
                    );
                    at += 20;
                    assert_eq!(
                        record["data_offset"].as_u64().unwrap() as usize,
                        at,
                        "{what}"
                    );
                    assert_eq!(record["name"].as_str().unwrap(), name);
                    assert_eq!(record["nBytes"].as_u64().unwrap(), n_bytes);
                    // Against the layout table.
                    assert_eq!(name, t.role.op_name(), "{what} {t:?}");
                    assert_eq!(index, t.layer, "{what} {t:?}");
                    assert_eq!(offset, slice.op_offset, "{what} {t:?}");
                    assert_eq!(n_bytes, slice.bytes.total_bytes(), "{what} {t:?}");
                    let mut expected = Vec::new();
                    slice.bytes.gather_into(&bytes, &mut expected).unwrap();
                    let sent = &stream[at..at + n_bytes as usize];
                    assert!(sent == expected.as_slice(), "{what}: bytes of {t:?} differ");
                    at += n_bytes as usize;
                    checked_records += 1;
                }
                assert_eq!(weights["end_marker_offset"].as_u64().unwrap() as usize, at);
                assert_eq!(read_u32(&stream, at), 0, "{what}: no end marker");
                checked_scenarios += 1;
            }
        }
    }
    // 4 variants, 2nodes + 3nodes (2 workers) at least, all scenario folders in practice.
    assert!(checked_scenarios >= 12, "{checked_scenarios}");
    assert!(checked_records > 1000, "{checked_records}");
}

/// The column-split tensors really are strided for N > 1 (so the test above exercises the
/// strided gather), and the record offsets of MoE experts step by the slice size.
#[test]
fn column_slices_are_strided() {
    golden_or_skip!();
    let bytes = model_bytes("qwen3moe-q40");
    let layout = layout_of(&bytes);
    let split = layout.node_split(3).unwrap();
    let index = layout.position(TensorRole::W2, 0, Some(2)).unwrap();
    let s = split.slice(index, 1).unwrap();
    let t = layout.tensors()[index];
    // w2: 192 rows of 192 values (6 blocks, 108 bytes); node 1 takes blocks 2..4 of each row.
    assert_eq!(
        (s.bytes.rows, s.bytes.row_stride, s.bytes.bytes_per_row),
        (192, 108, 36)
    );
    assert_eq!(s.bytes.start, t.offset + 36);
    assert_eq!(s.op_offset, 2 * 192 * 36);
    assert_eq!(split.slice_bytes(index), Some(192 * 36));
    let emb = layout.position(TensorRole::Embedding, 0, None).unwrap();
    assert!(split.slice(emb, 1).is_none());
    assert!(split.slice(emb, 0).is_some());
}
