//! Conversion of small GGUF models written by the PyPI `gguf` package
//! (`io/tests/py/tiny_models.py`, random weights in K-, IQ4- and 5-bit types): Llama 3.1/3.2
//! RoPE scaling recovered from `rope_freqs.weight`, qwen3 and qwen3moe laid out as dllama's
//! `convert-hf.py` lays them out, each result checked tensor by tensor against the dequantized
//! source and then run by `airllama inference` on one node.
//!
//! Prints SKIPPED when no Python with `gguf` and numpy is found (see `pygguf`), and skips the
//! inference run when the `airllama` binary is not beside this test's directory (it is when
//! the whole workspace is tested, as scripts/test.sh does).
mod gguf_common;
mod pygguf;

use std::path::{Path, PathBuf};
use std::process::Command;

use airllama_io::convert::{ConvertError, ModelPlan, tokenizer_from_gguf, write_model};
use airllama_io::gguf::GgufFile;
use airllama_io::layout::{ModelLayout, TensorRole};
use airllama_io::model::{ArchType, HeaderKey, ModelHeader, NormEpsilon, RopeKind};
use airllama_kernels::block::FloatType;
use gguf_common::temp_path;

/// Writes the GGUF of `kind`; `None` (after printing SKIPPED) without a suitable Python.
fn gguf_of(kind: &str) -> Option<(PathBuf, GgufFile)> {
    let path = temp_path(&format!("{kind}.gguf"));
    match pygguf::run_script("tiny_models.py", &[path.to_str().unwrap(), kind]) {
        Ok(_) => {}
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return None;
        }
    }
    let file = GgufFile::open(&path).unwrap();
    Some((path, file))
}

/// The GGUF tensor and first element of a `.m` tensor, as llama.cpp names them.
fn source_of(role: TensorRole, layer: u32, expert: Option<u32>, per_expert: u64) -> (String, u64) {
    let blk = |s: &str| format!("blk.{layer}.{s}.weight");
    let exp = |s: &str| {
        let e = u64::from(expert.unwrap());
        (blk(s), e * per_expert)
    };
    match (role, expert) {
        (TensorRole::Embedding, _) => ("token_embd.weight".into(), 0),
        (TensorRole::Q, _) => (blk("attn_q"), 0),
        (TensorRole::K, _) => (blk("attn_k"), 0),
        (TensorRole::V, _) => (blk("attn_v"), 0),
        (TensorRole::Wo, _) => (blk("attn_output"), 0),
        (TensorRole::MoeGate, _) => (blk("ffn_gate_inp"), 0),
        (TensorRole::W1, Some(_)) => exp("ffn_gate_exps"),
        (TensorRole::W2, Some(_)) => exp("ffn_down_exps"),
        (TensorRole::W3, Some(_)) => exp("ffn_up_exps"),
        (TensorRole::W1, None) => (blk("ffn_gate"), 0),
        (TensorRole::W2, None) => (blk("ffn_down"), 0),
        (TensorRole::W3, None) => (blk("ffn_up"), 0),
        (TensorRole::QNorm, _) => (blk("attn_q_norm"), 0),
        (TensorRole::KNorm, _) => (blk("attn_k_norm"), 0),
        (TensorRole::AttentionNorm, _) => (blk("attn_norm"), 0),
        (TensorRole::FfnNorm, _) => (blk("ffn_norm"), 0),
        (TensorRole::FinalNorm, _) => ("output_norm.weight".into(), 0),
        (TensorRole::Classifier, _) => ("output.weight".into(), 0),
    }
}

/// Converts with `weights`, checks that the layout tiles the file and that every tensor holds
/// its source's values (as F32, or quantized to Q40), and writes the `.m` and `.t` files.
fn convert_and_check(
    kind: &str,
    gguf: &GgufFile,
    weights: FloatType,
) -> (ModelHeader, PathBuf, PathBuf) {
    let plan = ModelPlan::from_gguf_file(gguf, weights).unwrap();
    let mut bytes = Vec::new();
    let n = write_model(gguf, &plan, &mut bytes, &mut |_, _| {}).unwrap();
    assert_eq!(n, bytes.len() as u64);
    assert_eq!(plan.file_size(), n);
    let header = ModelHeader::parse(&bytes).unwrap();
    let c = *header.config();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let mut offset = header.header_size();
    for e in layout.tensors() {
        assert_eq!(e.offset, offset);
        offset += e.size;
        let per_expert = u64::from(e.rows) * u64::from(e.cols);
        let (name, start) = source_of(e.role, e.layer, e.expert, per_expert);
        let t = gguf.header().tensor(&name).unwrap();
        let mut values = vec![0f32; per_expert as usize];
        gguf.dequantize_range(t, start, &mut values).unwrap();
        let want: Vec<u8> = match e.float_type {
            FloatType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            FloatType::Q40 => {
                let mut out = Vec::new();
                airllama_io::convert::q40::quantize_q40_into(&values, &mut out);
                out
            }
            other => panic!("unexpected {other:?}"),
        };
        let got = &bytes[e.range().start as usize..e.range().end as usize];
        assert!(
            got == want.as_slice(),
            "{kind}: {:?} layer {} expert {:?} ({name} from {start}) differs",
            e.role,
            e.layer,
            e.expert
        );
    }
    assert_eq!(offset, bytes.len() as u64);
    assert_eq!(c.weight_type, weights);

    let tokenizer = tokenizer_from_gguf(gguf.header()).unwrap();
    plan.check_tokenizer(&tokenizer).unwrap();
    let suffix = weights.name();
    let m = temp_path(&format!("{kind}-{suffix}.m"));
    let t = temp_path(&format!("{kind}-{suffix}.t"));
    std::fs::write(&m, &bytes).unwrap();
    std::fs::write(&t, tokenizer.to_bytes().unwrap()).unwrap();
    (header, m, t)
}

/// The `airllama` binary of this build (beside the `deps` directory of this test binary).
fn airllama_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("airllama");
    bin.is_file().then_some(bin)
}

/// Runs `airllama inference` on one node; panics unless it generates tokens.
fn run_inference(model: &Path, tokenizer: &Path, weights: FloatType) {
    let Some(bin) = airllama_binary() else {
        println!(
            "SKIPPED inference of {}: no airllama binary beside this test (test the workspace)",
            model.display()
        );
        return;
    };
    let buffer = if weights == FloatType::Q40 {
        "q80"
    } else {
        "f32"
    };
    let out = Command::new(&bin)
        .args(["inference", "--model"])
        .arg(model)
        .arg("--tokenizer")
        .arg(tokenizer)
        .args([
            "--buffer-float-type",
            buffer,
            "--steps",
            "12",
            "--prompt",
            "the the",
            "--nthreads",
            "1",
            "--temperature",
            "0",
            "--seed",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "airllama inference on {} failed:\n{stdout}\n{stderr}",
        model.display()
    );
    let all = format!("{stdout}{stderr}");
    assert!(
        !all.to_lowercase().contains("nan"),
        "inference of {} produced NaN:\n{all}",
        model.display()
    );
    println!(
        "inference of {} ({buffer}):\n{}",
        model.display(),
        stdout.trim_end()
    );
}

fn pair(header: &ModelHeader, key: HeaderKey) -> Option<i32> {
    header
        .pairs()
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
}

/// The frequencies dllama's Llama 3.1 RoPE derives from the header (the kernels' cache, read
/// back at position 1 as angles) are llama.cpp's: each base frequency divided by its
/// `rope_freqs.weight` entry.
fn rope_matches_llama_cpp(gguf: &GgufFile, header: &ModelHeader) {
    use airllama_kernels::backend::Backend;
    use airllama_kernels::ops::{RopeScaling, RopeSlice, fill_rope_cache};
    let c = *header.config();
    let t = gguf.header().tensor("rope_freqs.weight").unwrap();
    let mut table = vec![0f32; t.n_elements as usize];
    gguf.dequantize_range(t, 0, &mut table).unwrap();
    let hd = c.head_dim;
    let slice = RopeSlice::new(c.rope_type, hd, hd, 1, 1, 2, hd, c.rope_theta, 0).unwrap();
    let scaling = RopeScaling {
        factor: c.rope_scaling_factor,
        low_freq_factor: c.rope_scaling_low_freq_factor,
        high_freq_factor: c.rope_scaling_high_freq_factor,
        orig_max_seq_len: c.rope_scaling_orig_max_seq_len,
    };
    let mut cache = vec![0f32; slice.cache_len(c.rope_type).unwrap()];
    fill_rope_cache(Backend::detect(), c.rope_type, &slice, &scaling, &mut cache).unwrap();
    let row = &cache[hd as usize..];
    for (i, &factor) in table.iter().enumerate() {
        let base = 1.0 / c.rope_theta.powf((2 * i) as f32 / hd as f32);
        let want = f64::from(base) / f64::from(factor);
        let got = f64::from(row[2 * i + 1]).atan2(f64::from(row[2 * i]));
        assert!(
            (got - want).abs() <= want * 1e-4,
            "pair {i}: dllama's frequency {got:e}, llama.cpp's {want:e}"
        );
    }
}

#[test]
fn llama31_rope_scaling_is_recovered_and_runs() {
    for (kind, factor) in [("llama31", 8), ("llama32", 32)] {
        let Some((path, gguf)) = gguf_of(kind) else {
            return;
        };
        // The header-only planner cannot read the table and says so.
        let err = ModelPlan::from_gguf(gguf.header(), FloatType::Q40).unwrap_err();
        assert!(err.to_string().contains("from_gguf_file"), "{err}");
        for weights in [FloatType::Q40, FloatType::F32] {
            let (header, m, t) = convert_and_check(kind, &gguf, weights);
            let c = *header.config();
            assert_eq!(c.arch, ArchType::Llama);
            assert_eq!(c.rope_type, RopeKind::Llama31);
            assert_eq!(
                (
                    c.rope_scaling_factor,
                    c.rope_scaling_low_freq_factor,
                    c.rope_scaling_high_freq_factor,
                    c.rope_scaling_orig_max_seq_len
                ),
                (factor as f32, 1.0, 4.0, 8192)
            );
            assert_eq!(
                (c.rope_theta, c.seq_len, c.head_dim),
                (500000.0, 131072, 128)
            );
            // The keys and order of dllama's convert-hf.py for a Llama 3.1 config.json.
            let keys: Vec<i32> = header.pairs().iter().map(|(k, _)| k.code()).collect();
            assert_eq!(
                keys,
                [
                    0, 1, 11, 2, 3, 4, 5, 6, 13, 10, 9, 7, 8, 12, 14, 15, 16, 17, 18, 20
                ]
            );
            assert_eq!(pair(&header, HeaderKey::RopeType), Some(2));
            rope_matches_llama_cpp(&gguf, &header);
            run_inference(&m, &t, weights);
            // `airllama convert gguf` reads the table too: the same bytes as the library.
            if weights == FloatType::Q40
                && let Some(bin) = airllama_binary()
            {
                let (m2, t2) = (
                    temp_path(&format!("{kind}-cli.m")),
                    temp_path(&format!("{kind}-cli.t")),
                );
                let out = Command::new(&bin)
                    .args(["convert", "gguf"])
                    .arg(&path)
                    .arg(&m2)
                    .arg(&t2)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
                assert!(std::fs::read(&m2).unwrap() == std::fs::read(&m).unwrap());
                assert!(std::fs::read(&t2).unwrap() == std::fs::read(&t).unwrap());
            }
        }
    }
}

#[test]
fn llama31_numbers_on_a_small_head_use_llama3_defaults() {
    let Some((_, gguf)) = gguf_of("llama31-h16") else {
        return;
    };
    let (header, m, t) = convert_and_check("llama31-h16", &gguf, FloatType::Q40);
    let c = *header.config();
    assert_eq!(c.head_dim, 16);
    assert_eq!(
        (
            c.rope_scaling_factor,
            c.rope_scaling_low_freq_factor,
            c.rope_scaling_high_freq_factor,
            c.rope_scaling_orig_max_seq_len
        ),
        (8.0, 1.0, 4.0, 8192)
    );
    rope_matches_llama_cpp(&gguf, &header);
    run_inference(&m, &t, FloatType::Q40);
}

#[test]
fn rope_tables_without_llama3_parameters_are_refused() {
    for (kind, why) in [
        ("llama-rope-odd", "not an integer"),
        ("llama-rope-bumpy", "no such parameters"),
    ] {
        let Some((_, gguf)) = gguf_of(kind) else {
            return;
        };
        let err = ModelPlan::from_gguf_file(&gguf, FloatType::Q40).unwrap_err();
        assert!(matches!(err, ConvertError::UnsupportedFeature(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("rope_freqs.weight") && msg.contains(why),
            "{msg}"
        );
        println!("{kind}: {msg}");
    }
}

#[test]
fn qwen3_converts_as_dllama_lays_it_out_and_runs() {
    let Some((_, gguf)) = gguf_of("qwen3") else {
        return;
    };
    for weights in [FloatType::Q40, FloatType::F32] {
        let (header, m, t) = convert_and_check("qwen3", &gguf, weights);
        let c = *header.config();
        assert_eq!(c.arch, ArchType::Qwen3);
        assert_eq!((c.dim, c.hidden_dim, c.n_layers), (256, 512, 2));
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (4, 2, 64));
        assert_eq!((c.n_experts, c.seq_len), (0, 40960));
        assert_eq!(c.rope_theta, 1000000.0);
        assert_eq!(c.rope_type, RopeKind::Falcon);
        assert_eq!(c.norm_epsilon, NormEpsilon::E6);
        // convert-hf.py's keys for a Qwen3 config.json (head_dim present, no MoE size).
        let keys: Vec<i32> = header.pairs().iter().map(|(k, _)| k.code()).collect();
        assert_eq!(keys, [0, 1, 11, 2, 3, 4, 5, 6, 13, 10, 9, 7, 8, 12, 19, 20]);
        run_inference(&m, &t, weights);
    }
}

#[test]
fn qwen3moe_converts_as_dllama_lays_it_out_and_runs() {
    let Some((_, gguf)) = gguf_of("qwen3moe") else {
        return;
    };
    // dllama's MoE layers need Q80 activations, which multiply only Q40 weights.
    let err = ModelPlan::from_gguf_file(&gguf, FloatType::F32).unwrap_err();
    assert!(err.to_string().contains("q40 weights"), "{err}");
    {
        let weights = FloatType::Q40;
        let (header, m, t) = convert_and_check("qwen3moe", &gguf, weights);
        let c = *header.config();
        assert_eq!(c.arch, ArchType::Qwen3Moe);
        assert_eq!(
            (c.n_experts, c.n_active_experts, c.moe_hidden_dim),
            (4, 2, 256)
        );
        assert_eq!((c.dim, c.hidden_dim, c.head_dim), (256, 512, 64));
        let keys: Vec<i32> = header.pairs().iter().map(|(k, _)| k.code()).collect();
        assert_eq!(
            keys,
            [0, 1, 11, 2, 3, 4, 5, 6, 13, 10, 9, 7, 8, 12, 19, 20, 21]
        );
        let layout = ModelLayout::new(&header, std::fs::metadata(&m).unwrap().len()).unwrap();
        assert!(layout.find(TensorRole::W2, 1, Some(3)).is_some());
        run_inference(&m, &t, weights);
    }
}

/// A tensor the layout has no place for (here an attention bias) is refused, not dropped.
#[test]
fn unknown_tensors_are_refused() {
    let mut g = gguf_common::tiny_llama();
    g.tensor(
        "blk.0.attn_q.bias",
        &[64],
        gguf_common::G_F32,
        gguf_common::f32_data(&[0.0; 64]),
    );
    let header = airllama_io::gguf::GgufHeader::parse(&g.build()).unwrap();
    let err = ModelPlan::from_gguf(&header, FloatType::Q40).unwrap_err();
    assert!(err.to_string().contains("blk.0.attn_q.bias"), "{err}");
}
