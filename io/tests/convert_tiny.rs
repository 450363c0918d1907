//! GGUF → .m/.t conversion of a synthetic tiny llama (every source tensor type appears).
mod gguf_common;

use airllama_io::convert::q40::quantize_q40_into;
use airllama_io::convert::{
    ConvertError, ModelPlan, VocabOrder, tokenizer_from_gguf, write_model, write_model_report,
};
use airllama_io::gguf::{GgufFile, GgufHeader};
use airllama_io::layout::{ModelLayout, TensorRole};
use airllama_io::model::{ArchType, ModelHeader, NormEpsilon};
use airllama_io::tokenizer_file::{TokenType, TokenizerFile, VocabKind};
use airllama_kernels::block::FloatType;
use gguf_common::*;

fn open(name: &str, g: &GgufBuilder) -> GgufFile {
    let path = temp_path(name);
    std::fs::write(&path, g.build()).unwrap();
    GgufFile::open(&path).unwrap()
}

fn convert(gguf: &GgufFile, weights: FloatType) -> (ModelPlan, Vec<u8>) {
    let plan = ModelPlan::from_gguf(gguf.header(), weights).unwrap();
    let mut out = Vec::new();
    let mut last = 0;
    let n = write_model(gguf, &plan, &mut out, &mut |done, _| {
        assert!(done >= last, "progress went backwards");
        last = done;
    })
    .unwrap();
    assert_eq!(n, out.len() as u64);
    assert_eq!(last, n);
    (plan, out)
}

fn dequantized(gguf: &GgufFile, name: &str) -> Vec<f32> {
    let t = gguf.header().tensor(name).unwrap();
    let mut v = vec![0f32; t.n_elements as usize];
    gguf.dequantize_range(t, 0, &mut v).unwrap();
    v
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn q40_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    quantize_q40_into(v, &mut out);
    out
}

/// The GGUF name of the source of each layout entry.
fn source_name(role: TensorRole, layer: u32, tied: bool) -> String {
    let blk = |s: &str| format!("blk.{layer}.{s}.weight");
    match role {
        TensorRole::Embedding => "token_embd.weight".into(),
        TensorRole::Q => blk("attn_q"),
        TensorRole::K => blk("attn_k"),
        TensorRole::V => blk("attn_v"),
        TensorRole::Wo => blk("attn_output"),
        TensorRole::W1 => blk("ffn_gate"),
        TensorRole::W2 => blk("ffn_down"),
        TensorRole::W3 => blk("ffn_up"),
        TensorRole::AttentionNorm => blk("attn_norm"),
        TensorRole::FfnNorm => blk("ffn_norm"),
        TensorRole::FinalNorm => "output_norm.weight".into(),
        TensorRole::Classifier if tied => "token_embd.weight".into(),
        TensorRole::Classifier => "output.weight".into(),
        other => panic!("a llama file has no {other:?}"),
    }
}

/// `values` (rows of `cols`) with row `r` taken from source row `order.source_id(r)`: the
/// embedding and classifier follow the tokenizer's relabeling.
fn reorder_rows(values: &[f32], cols: usize, order: &VocabOrder) -> Vec<f32> {
    let rows = values.len() / cols;
    (0..rows as u32)
        .flat_map(|r| {
            let s = order.source_id(r) as usize;
            values[s * cols..(s + 1) * cols].iter().copied()
        })
        .collect()
}

/// Checks the header, that the layout covers the file exactly, and every tensor's bytes.
fn check_model(gguf: &GgufFile, bytes: &[u8], weights: FloatType, tied: bool) {
    let order = VocabOrder::from_gguf(gguf.header()).unwrap();
    let header = ModelHeader::parse(bytes).unwrap();
    let c = *header.config();
    assert_eq!(c.arch, ArchType::Llama);
    assert_eq!((c.dim, c.hidden_dim, c.n_layers), (64, 96, 2));
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (4, 2, 16));
    assert_eq!((c.vocab_size, c.seq_len), (263, 128));
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.norm_epsilon, NormEpsilon::E5);
    assert_eq!(c.weight_type, weights);
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let mut expected_offset = header.header_size();
    for entry in layout.tensors() {
        assert_eq!(entry.offset, expected_offset);
        expected_offset += entry.size;
        let name = source_name(entry.role, entry.layer, tied);
        let mut values = dequantized(gguf, &name);
        if matches!(entry.role, TensorRole::Embedding | TensorRole::Classifier) {
            values = reorder_rows(&values, c.dim as usize, &order);
        }
        let want = match entry.float_type {
            FloatType::F32 => f32_bytes(&values),
            FloatType::Q40 => q40_bytes(&values),
            other => panic!("unexpected {other:?}"),
        };
        let got = &bytes[entry.range().start as usize..entry.range().end as usize];
        assert!(
            got == want.as_slice(),
            "{:?} layer {} ({name}) differs",
            entry.role,
            entry.layer
        );
    }
    assert_eq!(expected_offset, bytes.len() as u64);
}

#[test]
fn tiny_llama_to_q40_and_f32() {
    let gguf = open("tiny.gguf", &tiny_llama());
    for weights in [FloatType::Q40, FloatType::F32] {
        let (plan, bytes) = convert(&gguf, weights);
        assert!(!plan.tied_embeddings);
        assert_eq!(plan.file_size(), bytes.len() as u64);
        check_model(&gguf, &bytes, weights, false);
        // Header keys and order as dllama's convert-hf.py writes them (no head_dim: the GGUF
        // has no key_length, like a config.json without head_dim).
        let keys: Vec<i32> = ModelHeader::parse(&bytes)
            .unwrap()
            .pairs()
            .iter()
            .map(|(k, _)| k.code())
            .collect();
        assert_eq!(keys, [0, 1, 11, 2, 3, 4, 5, 6, 13, 10, 9, 7, 8, 12, 20]);
        // Converting again gives the same bytes.
        assert!(
            convert(&gguf, weights).1 == bytes,
            "second conversion differs"
        );
    }
}

/// q/k pass through unpermuted: with f32 output the q matrix is the GGUF's, value for value.
#[test]
fn q_and_k_rows_keep_gguf_order() {
    let gguf = open("tiny-qk.gguf", &tiny_llama());
    let (_, bytes) = convert(&gguf, FloatType::F32);
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    for (role, name) in [
        (TensorRole::Q, "blk.1.attn_q.weight"),
        (TensorRole::K, "blk.1.attn_k.weight"),
    ] {
        let e = layout.find(role, 1, None).unwrap();
        let got = &bytes[e.range().start as usize..e.range().end as usize];
        assert_eq!(got, f32_bytes(&dequantized(&gguf, name)).as_slice());
    }
}

#[test]
fn tied_embeddings_become_the_classifier() {
    let mut g = tiny_llama();
    g.remove_tensor("output.weight");
    let gguf = open("tiny-tied.gguf", &g);
    let (plan, bytes) = convert(&gguf, FloatType::Q40);
    assert!(plan.tied_embeddings);
    check_model(&gguf, &bytes, FloatType::Q40, true);
}

#[test]
fn epsilon_and_head_dim_from_metadata() {
    let mut g = tiny_llama();
    g.f32("llama.attention.layer_norm_rms_epsilon", 1e-6)
        .u32("llama.attention.key_length", 16);
    let gguf = open("tiny-eps6.gguf", &g);
    let plan = ModelPlan::from_gguf(gguf.header(), FloatType::Q40).unwrap();
    assert_eq!(plan.header.config().norm_epsilon, NormEpsilon::E6);
    assert_eq!(
        plan.header.pairs().last().map(|(k, v)| (k.code(), *v)),
        Some((20, 6))
    );
    assert!(
        plan.header
            .pairs()
            .iter()
            .any(|(k, v)| k.code() == 19 && *v == 16)
    );
}

fn plan_error(g: &GgufBuilder) -> ConvertError {
    let header = GgufHeader::parse(&g.build()).unwrap();
    ModelPlan::from_gguf(&header, FloatType::Q40).unwrap_err()
}

#[test]
fn unsupported_inputs_get_typed_errors() {
    let mut g = tiny_llama();
    g.str("general.architecture", "qwen2");
    assert!(matches!(plan_error(&g), ConvertError::UnsupportedArchitecture(a) if a == "qwen2"));
    let mut g = tiny_llama();
    g.remove("llama.context_length");
    assert!(matches!(
        plan_error(&g),
        ConvertError::MissingMetadata("llama.context_length")
    ));
    let mut g = tiny_llama();
    g.f32("llama.attention.layer_norm_rms_epsilon", 1e-4);
    assert!(matches!(
        plan_error(&g),
        ConvertError::UnsupportedEpsilon(_)
    ));
    let mut g = tiny_llama();
    g.str("llama.attention.head_count", "four");
    assert!(matches!(plan_error(&g), ConvertError::BadMetadata { .. }));
    let mut g = tiny_llama();
    g.f32("llama.rope.freq_base", 10000.5);
    assert!(matches!(plan_error(&g), ConvertError::BadMetadata { .. }));
    let mut g = tiny_llama();
    g.u32("llama.rope.dimension_count", 8);
    assert!(matches!(
        plan_error(&g),
        ConvertError::UnsupportedFeature(_)
    ));
    let mut g = tiny_llama();
    g.tensor("rope_freqs.weight", &[8], G_F32, f32_data(&[1.0; 8]));
    assert!(matches!(
        plan_error(&g),
        ConvertError::UnsupportedFeature(_)
    ));
    let mut g = tiny_llama();
    g.remove_tensor("blk.1.ffn_up.weight");
    assert!(matches!(plan_error(&g), ConvertError::MissingTensor(n) if n == "blk.1.ffn_up.weight"));
    let mut g = tiny_llama();
    g.tensor(
        "blk.0.attn_q.weight",
        &[64, 32],
        G_F32,
        vec![0; 64 * 32 * 4],
    );
    assert!(matches!(plan_error(&g), ConvertError::TensorShape { .. }));
    let mut g = tiny_llama();
    g.tensor(
        "blk.0.ffn_up.weight",
        &[64, 96],
        G_Q6_K,
        vec![0; 64 * 96 / 256 * 210],
    );
    // 64-value rows cannot hold 256-value K-quant blocks: the reader refuses the shape.
    assert!(GgufHeader::parse(&g.build()).is_err());
    let header = GgufHeader::parse(&tiny_llama().build()).unwrap();
    assert!(matches!(
        ModelPlan::from_gguf(&header, FloatType::Q80),
        Err(ConvertError::UnsupportedWeightType(FloatType::Q80))
    ));
}

/// A source type the converter cannot dequantize is named in the error, by its ggml name. (A
/// real IQ2_XXS tensor needs 256-value rows, wider than the tiny model's, so the type is changed
/// in the parsed header.)
#[test]
fn unsupported_tensor_type_is_named() {
    let mut h = GgufHeader::parse(&tiny_llama().build()).unwrap();
    let t = h
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.attn_v.weight")
        .unwrap();
    t.ty = airllama_io::gguf::GgmlType::IQ2_XXS;
    let err = ModelPlan::from_gguf(&h, FloatType::Q40).unwrap_err();
    assert!(
        matches!(&err, ConvertError::UnsupportedTensorType { name, .. } if name == "blk.0.attn_v.weight")
    );
    let msg = err.to_string();
    assert!(
        msg.contains("type iq2_xxs") && msg.contains("q4_K, q5_K, q6_K"),
        "{msg}"
    );
}

#[test]
fn tokenizer_from_gpt2_vocabulary() {
    let g = tiny_llama();
    let header = GgufHeader::parse(&g.build()).unwrap();
    let t = tokenizer_from_gguf(&header).unwrap();
    assert_eq!(t.vocab.len(), 263);
    // Byte tokens map back to raw bytes: the 256 byte tokens cover every byte once.
    let mut seen = [false; 256];
    for tok in &t.vocab[3..259] {
        assert_eq!(tok.bytes.len(), 1);
        seen[tok.bytes[0] as usize] = true;
    }
    assert!(seen.iter().all(|&s| s));
    assert_eq!(t.vocab[259].bytes, b" t");
    // Specials come first in the GGUF (ids 0..=2, bos 1): they move to the end, bos first, and
    // the last three ordinary tokens take their ids, so dllama's split at BOS_ID holds.
    assert_eq!(t.vocab[0].bytes, b"he");
    assert_eq!(t.vocab[1].bytes, b" the");
    assert_eq!(t.vocab[2].bytes, "é".as_bytes());
    assert_eq!(t.vocab[260].bytes, b"<|im_start|>");
    assert_eq!(t.vocab[261].bytes, b"<|endoftext|>");
    assert_eq!(t.vocab[262].bytes, b"<|im_end|>");
    // No scores in the GGUF: -(GGUF id), as dllama's converter; the score moves with the token.
    assert_eq!(t.vocab[1].score, -261.0);
    assert_eq!(t.vocab[259].score, -259.0);
    assert_eq!(t.eos_ids, [262]);
    assert!(t.chat_template.as_deref().unwrap().starts_with(b"{% for m"));
    assert_eq!((t.bos_id, t.add_bos), (260, false));
    assert_eq!(t.true_bos_id(), Some(260));
    let ext = t.extension.as_ref().unwrap();
    assert_eq!(ext.kind, VocabKind::ByteLevelBpe);
    assert_eq!(ext.token_types[0], TokenType::Normal);
    assert_eq!(ext.token_types[260], TokenType::Control);
    // dllama's rule: exactly the ids from BOS_ID on are special.
    assert!((0..263).all(|id| t.is_special(id) == (id >= t.bos_id)));
    let order = VocabOrder::from_gguf(&header).unwrap();
    assert_eq!(
        order.moved(),
        [(0, 261), (1, 260), (2, 262), (260, 0), (261, 1), (262, 2)]
    );
    // The file round-trips.
    assert_eq!(TokenizerFile::parse(&t.to_bytes().unwrap()).unwrap(), t);
}

#[test]
fn tokenizer_with_specials_last_keeps_true_bos() {
    let (mut tokens, mut types) = tiny_vocab();
    // Move the three specials to the end (Llama 3 style) and give scores.
    let specials: Vec<String> = tokens.drain(..3).collect();
    types.drain(..3);
    tokens.extend(specials);
    types.extend([3, 3, 3]);
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let scores: Vec<f32> = (0..tokens.len()).map(|i| i as f32 * 0.5).collect();
    let mut g = tiny_llama();
    g.str_array("tokenizer.ggml.tokens", &refs)
        .i32_array("tokenizer.ggml.token_type", &types)
        .f32_array("tokenizer.ggml.scores", &scores)
        .u32("tokenizer.ggml.bos_token_id", 260)
        .u32("tokenizer.ggml.eos_token_id", 261)
        .u32("tokenizer.ggml.eot_token_id", 262)
        .bool("tokenizer.ggml.add_bos_token", true);
    let header = GgufHeader::parse(&g.build()).unwrap();
    let t = tokenizer_from_gguf(&header).unwrap();
    assert_eq!((t.bos_id, t.add_bos), (260, true));
    assert_eq!(t.eos_ids, [261, 262]);
    assert_eq!(t.vocab[5].score, 2.5);

    let plan = ModelPlan::from_gguf(&header, FloatType::Q40).unwrap();
    assert!(plan.check_tokenizer(&t).is_ok());
    let mut short = t.clone();
    short.vocab.pop();
    assert!(matches!(
        plan.check_tokenizer(&short),
        Err(ConvertError::VocabSizeMismatch {
            model: 263,
            tokenizer: 262
        })
    ));

    let mut g = tiny_llama();
    g.str("tokenizer.ggml.model", "bert");
    let header = GgufHeader::parse(&g.build()).unwrap();
    assert!(
        matches!(tokenizer_from_gguf(&header), Err(ConvertError::UnsupportedTokenizer(m)) if m == "bert")
    );
    let mut g = tiny_llama();
    g.u32("tokenizer.ggml.eos_token_id", 5000);
    let header = GgufHeader::parse(&g.build()).unwrap();
    assert!(matches!(
        tokenizer_from_gguf(&header),
        Err(ConvertError::BadMetadata { .. })
    ));
}

#[test]
fn sentencepiece_vocabulary() {
    let mut g = tiny_llama();
    g.str("tokenizer.ggml.model", "llama")
        .str_array(
            "tokenizer.ggml.tokens",
            &["<unk>", "<s>", "</s>", "<0x0A>", "▁the", "a"],
        )
        .i32_array("tokenizer.ggml.token_type", &[2, 3, 3, 6, 1, 1])
        .f32_array("tokenizer.ggml.scores", &[0.0, 0.0, 0.0, 0.0, -1.0, -2.0])
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .remove("tokenizer.ggml.add_bos_token");
    let header = GgufHeader::parse(&g.build()).unwrap();
    let t = tokenizer_from_gguf(&header).unwrap();
    let bytes: Vec<&[u8]> = t.vocab.iter().map(|v| v.bytes.as_slice()).collect();
    // <s> and </s> swap with the last two pieces; <unk> stays a regular token as in dllama.
    assert_eq!(
        bytes,
        [&b"<unk>"[..], b" the", b"a", b"\n", b"<s>", b"</s>"]
    );
    assert!(t.true_add_bos(), "SentencePiece defaults to add-bos");
    assert_eq!((t.bos_id, t.add_bos), (4, true));
    assert_eq!(t.eos_ids, [5]);
    assert_eq!(t.vocab[1].score, -1.0);
}

/// The report counts the GGUF tensors of every source type once (the tied embedding too), the
/// `.m` tensors each became, and the largest Q40 rounding error, which is the error of the
/// written blocks decoded as dllama decodes them.
#[test]
fn report_counts_source_types_and_the_q40_error() {
    use airllama_io::gguf::GgmlType;
    use half::f16;
    let mut g = tiny_llama();
    g.remove_tensor("output.weight");
    let gguf = open("tiny-report.gguf", &g);
    let plan = ModelPlan::from_gguf(gguf.header(), FloatType::Q40).unwrap();
    let mut out = Vec::new();
    let report = write_model_report(&gguf, &plan, &mut out, &mut |_, _| {}).unwrap();
    assert_eq!(report.bytes, out.len() as u64);
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
    ] {
        let gguf_count = gguf.header().tensors.iter().filter(|t| t.ty == ty).count();
        let entry = report.types.iter().find(|t| t.source == ty).unwrap();
        assert_eq!(entry.source_tensors, gguf_count, "{}", ty.name());
    }
    let written: usize = report
        .types
        .iter()
        .map(|t| t.written_f32 + t.written_q40)
        .sum();
    assert_eq!(written, plan.tensors.len());
    // Recompute each type's worst error from the file.
    let header = ModelHeader::parse(&out).unwrap();
    let layout = ModelLayout::new(&header, out.len() as u64).unwrap();
    let order = VocabOrder::from_gguf(gguf.header()).unwrap();
    let mut worst = std::collections::HashMap::<GgmlType, f32>::new();
    for (entry, planned) in layout.tensors().iter().zip(&plan.tensors) {
        if entry.float_type != FloatType::Q40 {
            continue;
        }
        let mut values = dequantized(&gguf, &planned.source.name);
        if planned.row_order.is_some() {
            values = reorder_rows(&values, planned.cols as usize, &order);
        }
        let blocks = &out[entry.range().start as usize..entry.range().end as usize];
        let mut max = 0f32;
        for (x, b) in values.chunks_exact(32).zip(blocks.chunks_exact(18)) {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            for j in 0..16 {
                let lo = (f32::from(b[2 + j] & 15) - 8.0) * d;
                let hi = (f32::from(b[2 + j] >> 4) - 8.0) * d;
                max = max.max((lo - x[j]).abs()).max((hi - x[j + 16]).abs());
            }
        }
        let w = worst.entry(planned.source.ty).or_insert(0.0);
        *w = w.max(max);
    }
    for t in &report.types {
        assert_eq!(
            t.q40_max_abs_error,
            worst.get(&t.source).copied(),
            "{}",
            t.source.name()
        );
    }
    // The tied classifier is Q8_0 like the embedding: one GGUF tensor, written twice.
    let q8 = report
        .types
        .iter()
        .find(|t| t.source == GgmlType::Q8_0)
        .unwrap();
    assert!(q8.written_f32 >= 1 && q8.written_q40 >= 1);
}
