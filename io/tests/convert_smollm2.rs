//! Conversion of the real SmolLM2-135M-Instruct Q4_1 GGUF (`scripts/fetch-smollm2.sh` fetches
//! it). Skipped, with a message, when the file is absent.
use std::path::PathBuf;

use airllama_io::convert::{ModelPlan, tokenizer_from_gguf, write_model};
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
    write_model(&gguf, &plan, &mut first, &mut |_, _| {}).unwrap();
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
    assert_eq!(t.vocab[1].bytes, b"<|im_start|>");
    assert_eq!(t.vocab[17].bytes, b"!");
    assert_eq!(t.true_bos_id(), Some(1));
    assert!(!t.true_add_bos());
    assert_eq!(t.eos_ids, [2]);
    // Control tokens are ids 0..=16: dllama's split moves to the last id.
    assert_eq!((t.bos_id, t.add_bos), (49151, false));
    let special: Vec<u32> = (0..49152).filter(|&id| t.is_special(id)).collect();
    assert_eq!(special, (0..17).collect::<Vec<u32>>());
    assert!(t.vocab.iter().any(|v| v.bytes == b" capital"));
    let template = String::from_utf8(t.chat_template.clone().unwrap()).unwrap();
    assert!(template.contains("<|im_start|>"));
}
