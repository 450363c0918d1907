//! Conversion of the real SmolLM2-135M-Instruct Q4_1 GGUF (`scripts/fetch-smollm2.sh` fetches
//! it). Skipped, with a message, when the file is absent.
use std::path::PathBuf;

use airllama_io::convert::{ModelPlan, tokenizer_from_gguf, write_model, write_model_report};
use airllama_io::gguf::{GgmlType, GgufFile};
use airllama_io::layout::{ModelLayout, TensorRole};
use airllama_io::model::{ModelHeader, NormEpsilon};
use airllama_io::tokenizer_file::TokenizerFile;
use airllama_kernels::block::FloatType;

fn smollm2() -> Option<PathBuf> {
    let cache = std::env::var_os("AIRLLAMA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models")));
    let path = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        println!(
            "SKIPPED: {} is absent (run scripts/fetch-smollm2.sh)",
            path.display()
        );
        None
    }
}

#[test]
fn smollm2_converts_to_q40() {
    let Some(path) = smollm2() else { return };
    let gguf = GgufFile::open(&path).unwrap();
    let h = gguf.header();
    assert_eq!(h.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(h.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q4_1);

    let plan = ModelPlan::from_gguf(h, FloatType::Q40).unwrap();
    assert!(plan.tied_embeddings);
    let mut first = Vec::new();
    let report = write_model_report(&gguf, &plan, &mut first, &mut |_, _| {}).unwrap();
    assert_eq!(report.bytes, first.len() as u64);
    // The embedding (and the tied classifier) is Q8_0, the 210 matrices Q4_1, the 61 norms F32.
    let summary: Vec<(GgmlType, usize, usize, usize)> = report
        .types
        .iter()
        .map(|t| (t.source, t.source_tensors, t.written_f32, t.written_q40))
        .collect();
    assert_eq!(
        summary,
        [
            (GgmlType::Q8_0, 1, 1, 1),
            (GgmlType::Q4_1, 210, 0, 210),
            (GgmlType::F32, 61, 61, 0)
        ]
    );
    for t in &report.types {
        println!(
            "{}: max |q40 - source| {:?} in {:?}",
            t.source.name(),
            t.q40_max_abs_error,
            t.q40_worst_tensor
        );
        assert_eq!(t.q40_max_abs_error.is_some(), t.written_q40 > 0);
        assert!(t.q40_max_abs_error.is_none_or(|e| e > 0.0 && e < 1.0));
    }
    let header = ModelHeader::parse(&first).unwrap();
    let c = *header.config();
    assert_eq!(
        (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads),
        (576, 1536, 30, 9, 3)
    );
    assert_eq!((c.head_dim, c.vocab_size, c.seq_len), (64, 49152, 8192));
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.norm_epsilon, NormEpsilon::E5);
    let layout = ModelLayout::new(&header, first.len() as u64).unwrap();
    assert_eq!(layout.tensors().len(), 3 + 30 * 9);
    let cls = layout.find(TensorRole::Classifier, 0, None).unwrap();
    assert_eq!(cls.range().end, first.len() as u64);

    let mut second = Vec::new();
    write_model(&gguf, &plan, &mut second, &mut |_, _| {}).unwrap();
    assert!(first == second, "converting twice gave different bytes");

    let t = tokenizer_from_gguf(h).unwrap();
    let bytes = t.to_bytes().unwrap();
    let t = TokenizerFile::parse(&bytes).unwrap();
    assert_eq!(t.vocab.len(), 49152);
    // The control tokens (GGUF ids 0..=16, bos 1) end the vocabulary, bos first, so that
    // dllama's split at BOS_ID makes exactly them special; the 17 ordinary tokens that ended
    // it take ids 0..=16, and every other token keeps its GGUF id.
    assert_eq!(t.vocab[49135].bytes, b"<|im_start|>");
    assert_eq!(t.vocab[49136].bytes, b"<|endoftext|>");
    assert_eq!(t.vocab[49137].bytes, b"<|im_end|>");
    assert_eq!(t.vocab[17].bytes, b"!");
    assert_eq!(t.true_bos_id(), Some(49135));
    assert!(!t.true_add_bos());
    assert_eq!(t.eos_ids, [49137]);
    assert_eq!((t.bos_id, t.add_bos), (49135, false));
    let special: Vec<u32> = (0..49152).filter(|&id| t.is_special(id)).collect();
    assert_eq!(special, (49135..49152).collect::<Vec<u32>>());
    assert_eq!(plan.vocab_order.moved().len(), 34);
    // The embedding row of file id 49135 is the GGUF's row 1 (<|im_start|>), and so on.
    let emb = layout.find(TensorRole::Embedding, 0, None).unwrap();
    let src = h.tensor("token_embd.weight").unwrap();
    for file_id in [0u32, 16, 17, 49135, 49137, 49151] {
        let mut want = vec![0f32; 576];
        let gguf_id = plan.vocab_order.source_id(file_id);
        gguf.dequantize_range(src, u64::from(gguf_id) * 576, &mut want)
            .unwrap();
        let start = (emb.offset + u64::from(file_id) * 576 * 4) as usize;
        let got: Vec<f32> = first[start..start + 576 * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, want, "embedding row {file_id}");
    }
    assert!(t.vocab.iter().any(|v| v.bytes == b" capital"));
    let template = String::from_utf8(t.chat_template.clone().unwrap()).unwrap();
    assert!(template.contains("<|im_start|>"));
}
