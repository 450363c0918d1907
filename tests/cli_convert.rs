//! `airllama convert gguf` as a user runs it: the per-type report, the checks on the outputs
//! before anything is converted, and tokenizer files that old and new readers handle.
//!
//! The GGUF is a tiny llama with f32 tensors and a SmolLM2-style vocabulary (control tokens
//! first), written with the library's own header encoder.
mod smollm2_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airllama::tokenizer::Tokenizer;
use airllama_io::convert::tokenizer::{gpt2_unicode_to_byte, in_gguf_order};
use airllama_io::convert::{VocabOrder, tokenizer_from_gguf};
use airllama_io::gguf::{GgmlType, GgufArray, GgufFile, GgufHeader, GgufValue, TensorInfo};
use airllama_io::model::ModelHeader;
use airllama_io::tokenizer_file::TokenizerFile;

const DIM: u64 = 32;
const ALIGNMENT: u64 = 32;

/// A fresh directory under the cargo test temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cli_convert")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The GPT-2 byte-level spelling of byte `b`.
fn gpt2_char(b: u8) -> char {
    (0u32..0x200)
        .filter_map(char::from_u32)
        .find(|&c| gpt2_unicode_to_byte(c) == Some(b))
        .unwrap()
}

/// Vocabulary: `<|endoftext|>`, `<|im_start|>` (bos), `<|im_end|>` (eos), the 256 bytes, then
/// a few merges — SmolLM2's layout in small.
fn vocabulary() -> (Vec<Vec<u8>>, Vec<i32>) {
    let mut tokens: Vec<Vec<u8>> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let mut types = vec![3, 3, 3];
    for b in 0..=255u8 {
        tokens.push(gpt2_char(b).to_string().into_bytes());
        types.push(1);
    }
    for merge in ["Ġt", "he", "Ġthe", "us", "er"] {
        tokens.push(merge.as_bytes().to_vec());
        types.push(1);
    }
    (tokens, types)
}

/// Deterministic small values.
fn values(seed: u64, n: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .flat_map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
            v.to_le_bytes()
        })
        .collect()
}

/// A one-layer f32 llama GGUF (tied classifier); `tokenizer_model` is
/// `tokenizer.ggml.model`.
fn tiny_gguf(tokenizer_model: &str) -> Vec<u8> {
    let (tokens, types) = vocabulary();
    let vocab = tokens.len() as u64;
    let s = |v: &str| GgufValue::String(v.as_bytes().to_vec());
    let metadata = vec![
        ("general.architecture".into(), s("llama")),
        ("llama.block_count".into(), GgufValue::U32(1)),
        ("llama.context_length".into(), GgufValue::U32(64)),
        ("llama.embedding_length".into(), GgufValue::U32(DIM as u32)),
        (
            "llama.feed_forward_length".into(),
            GgufValue::U32(DIM as u32),
        ),
        ("llama.attention.head_count".into(), GgufValue::U32(2)),
        ("llama.attention.head_count_kv".into(), GgufValue::U32(1)),
        ("llama.rope.freq_base".into(), GgufValue::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            GgufValue::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), s(tokenizer_model)),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(GgufArray::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(GgufArray::I32(types)),
        ),
        ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            GgufValue::Bool(false),
        ),
        (
            "tokenizer.chat_template".into(),
            s("{% for m in messages %}<|im_start|>{{m}}<|im_end|>{% endfor %}"),
        ),
    ];
    let kv = DIM / 2;
    let mut shapes: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![DIM, vocab])];
    for (name, rows) in [
        ("attn_q", DIM),
        ("attn_k", kv),
        ("attn_v", kv),
        ("attn_output", DIM),
        ("ffn_gate", DIM),
        ("ffn_down", DIM),
        ("ffn_up", DIM),
    ] {
        shapes.push((format!("blk.0.{name}.weight"), vec![DIM, rows]));
    }
    for name in ["blk.0.attn_norm", "blk.0.ffn_norm", "output_norm"] {
        shapes.push((format!("{name}.weight"), vec![DIM]));
    }
    let mut tensors = Vec::new();
    let mut data = Vec::new();
    for (i, (name, dims)) in shapes.into_iter().enumerate() {
        let n: u64 = dims.iter().product();
        tensors.push(TensorInfo {
            name,
            dims,
            ty: GgmlType::F32,
            offset: data.len() as u64,
            n_elements: n,
            n_bytes: Some(n * 4),
        });
        data.extend(values(i as u64, n));
        data.resize(
            (data.len() as u64).div_ceil(ALIGNMENT) as usize * ALIGNMENT as usize,
            0,
        );
    }
    let header = GgufHeader {
        version: 3,
        metadata,
        tensors,
        alignment: ALIGNMENT,
        data_offset: 0,
    };
    let mut file = header.encode();
    file.extend(data);
    file
}

fn convert(args: &[&Path], extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airllama"))
        .args(["convert", "gguf"])
        .args(args)
        .args(extra)
        .output()
        .expect("run airllama convert")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn reports_tensors_per_source_type_without_a_bar_on_a_pipe() {
    let dir = scratch("report");
    let input = dir.join("tiny.gguf");
    std::fs::write(&input, tiny_gguf("gpt2")).unwrap();
    let (m, t) = (dir.join("tiny.m"), dir.join("tiny.t"));
    let out = convert(&[&input, &m, &t], &[]);
    let err = stderr(&out);
    println!("{err}");
    assert!(out.status.success(), "{err}");
    // stderr is a pipe here: no progress bar, no terminal control characters.
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "{err:?}");
    let table: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.starts_with("source type"))
        .take_while(|l| !l.starts_with("token ids") && !l.starts_with("wrote"))
        .collect();
    assert_eq!(table.len(), 2, "{err}");
    // 11 GGUF tensors, all f32 (the embedding is read twice, once as the tied classifier):
    // the embedding and 3 norms stay f32, the 7 matrices and the classifier become q40, whose
    // rounding of values within ±0.1 is at most a step of 0.1/8.
    let cells: Vec<&str> = table[1].split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        ["f32", "11", "4", "8", "23136"],
        "{}",
        table[1]
    );
    let rms: f32 = cells[5].parse().unwrap();
    let max: f32 = cells[6].parse().unwrap();
    assert!(rms > 0.0 && rms < max && max <= 0.0125, "{}", table[1]);
    assert!(cells[7].starts_with('('), "{}", table[1]);
    assert!(err.contains("token ids: 6 of 264 renumbered"), "{err}");
    assert_eq!(listing(&dir), ["tiny.gguf", "tiny.m", "tiny.t"]);
    ModelHeader::parse(&std::fs::read(&m).unwrap()).unwrap();
    TokenizerFile::parse(&std::fs::read(&t).unwrap()).unwrap();
}

#[test]
fn refuses_to_write_over_its_input() {
    let dir = scratch("input");
    let bytes = tiny_gguf("gpt2");
    let input = dir.join("model.gguf");
    std::fs::write(&input, &bytes).unwrap();
    std::fs::hard_link(&input, dir.join("link.m")).unwrap();
    std::os::unix::fs::symlink(&input, dir.join("sym.t")).unwrap();
    let spelled = dir.join("sub/../model.gguf");
    std::fs::create_dir(dir.join("sub")).unwrap();
    let partial_input = dir.join("x.m.partial");
    std::fs::write(&partial_input, &bytes).unwrap();
    let cases: [(&Path, PathBuf, PathBuf); 5] = [
        (&input, input.clone(), dir.join("a.t")),
        (&input, dir.join("a.m"), spelled.clone()),
        (&input, dir.join("link.m"), dir.join("a.t")),
        (&input, dir.join("a.m"), dir.join("sym.t")),
        (&partial_input, dir.join("x.m"), dir.join("a.t")),
    ];
    for (from, m, t) in &cases {
        let out = convert(&[from, m, t], &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{m:?} {t:?} accepted");
        assert!(err.contains("it is the input file"), "{err}");
        assert_eq!(std::fs::read(from).unwrap(), bytes, "the input changed");
        assert_eq!(
            listing(&dir),
            ["link.m", "model.gguf", "sub", "sym.t", "x.m.partial"],
            "{m:?} {t:?} left files"
        );
    }
}

#[test]
fn checks_both_outputs_before_reading_the_input() {
    let dir = scratch("outputs");
    // Not a GGUF at all: every error below must come before the input is parsed.
    let input = dir.join("junk.gguf");
    std::fs::write(&input, b"not a gguf").unwrap();
    let m = dir.join("out.m");
    let cases: [(PathBuf, PathBuf, &str); 4] = [
        (m.clone(), dir.join("missing/out.t"), "does not exist"),
        (
            dir.join("missing/out.m"),
            dir.join("out.t"),
            "does not exist",
        ),
        (m.clone(), dir.join("./out.m"), "are the same file"),
        (m.clone(), dir.clone(), "is a directory"),
    ];
    for (m, t, message) in &cases {
        let out = convert(&[&input, m, t], &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{m:?} {t:?} accepted");
        assert!(err.contains(message), "{m:?} {t:?}: {err}");
        assert!(!err.contains("GGUF"), "the input was read first: {err}");
        assert_eq!(listing(&dir), ["junk.gguf"], "{m:?} {t:?} left files");
    }
    // A directory that exists but takes no files (procfs) fails when the partial files are
    // created, still before the input is read, and leaves no model behind.
    let out = convert(&[&input, &m, Path::new("/proc/self/out.t")], &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("cannot write"), "{err}");
    assert_eq!(listing(&dir), ["junk.gguf"]);
}

#[test]
fn a_tokenizer_failure_leaves_no_model() {
    let dir = scratch("tokenizer-failure");
    let input = dir.join("bert.gguf");
    std::fs::write(&input, tiny_gguf("bert")).unwrap();
    // An older .m at the output path stays as it was.
    std::fs::write(dir.join("old.m"), b"old").unwrap();
    for m in ["new.m", "old.m"] {
        let out = convert(&[&input, &dir.join(m), &dir.join("out.t")], &[]);
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains("unsupported tokenizer model \"bert\""),
            "{err}"
        );
        assert_eq!(listing(&dir), ["bert.gguf", "old.m"]);
        assert_eq!(std::fs::read(dir.join("old.m")).unwrap(), b"old");
    }
}

#[test]
fn tokenizer_files_of_the_earlier_converter_still_read_the_same() {
    let bytes = tiny_gguf("gpt2");
    let header = GgufHeader::parse(&bytes).unwrap();
    let current = tokenizer_from_gguf(&header).unwrap();
    let order = VocabOrder::from_gguf(&header).unwrap();
    assert!(!order.is_identity());
    // What the earlier converter wrote: GGUF ids, BOS_ID at dllama's split point (the last
    // id), add-bos off, the truth in the extension.
    let old = in_gguf_order(&current).unwrap();
    assert!(old.chat_stops.is_empty());
    assert_eq!((old.bos_id, old.add_bos), (263, false));
    assert_eq!(old.vocab[1].bytes, b"<|im_start|>");
    let old = TokenizerFile::parse(&old.to_bytes().unwrap()).unwrap();
    // The current file records the renumbering.
    let current = TokenizerFile::parse(&current.to_bytes().unwrap()).unwrap();
    let source = current.source_ids().unwrap().unwrap();
    assert!((0..264).all(|f| source[f as usize] == order.source_id(f)));
    let (new_tok, old_tok) = (Tokenizer::from_file(&current), Tokenizer::from_file(&old));
    assert_eq!(old_tok.bos_id(), Some(1));
    assert_eq!(new_tok.bos_id(), Some(order.file_id(1)));
    for text in [
        "<|im_start|>user\nthe the<|im_end|>\n<|im_start|>assistant\n",
        "the user theus",
        "<|endoftext|>x",
    ] {
        let a = new_tok.encode(text, true, true).unwrap();
        let b = old_tok.encode(text, true, true).unwrap();
        let mapped: Vec<u32> = b.iter().map(|&g| order.file_id(g)).collect();
        assert_eq!(a, mapped, "{text:?}");
        assert_eq!(
            new_tok.decode_all(&a).unwrap(),
            old_tok.decode_all(&b).unwrap()
        );
    }
}

/// The C++ dllama binary: `$DLLAMA_BIN`, else `/work/dllama/dllama`; `None` with a SKIPPED
/// line when neither exists.
fn dllama() -> Option<PathBuf> {
    let path = std::env::var_os("DLLAMA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/dllama/dllama"));
    if path.exists() {
        Some(path)
    } else {
        println!(
            "SKIPPED: no dllama binary at {} (set DLLAMA_BIN)",
            path.display()
        );
        None
    }
}

/// C++ `dllama chat` on the converted SmolLM2 answers a piped-in question and ends its reply
/// at `<|im_end|>`: the next "User" prompt follows the reply, not `<|im_start|>` lines until
/// the end of the context (what a `.t` with dllama's split moved past the chat markers gave).
#[test]
fn dllama_chat_on_converted_smollm2_ends_its_reply() {
    let (Some(gguf), Some(dllama)) = (smollm2_support::gguf(), dllama()) else {
        return;
    };
    let (m, t) = smollm2_support::convert(&gguf, "cli_convert/dllama-chat");

    use std::io::{Read, Write};
    let mut child = Command::new(&dllama)
        .arg("chat")
        .arg("--model")
        .arg(&m)
        .arg("--tokenizer")
        .arg(&t)
        .args(["--buffer-float-type", "q80", "--nthreads", "1"])
        .args(["--max-seq-len", "256", "--temperature", "0", "--seed", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // No system prompt, one question; then stdin closes, and dllama keeps asking for the next
    // question (it reads an empty line at end of input), which shows the reply has ended.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\nWhat is 2+2?\n")
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    const ASSISTANT: &str = "🤖 Assistant\n";
    const USER: &str = "👱 User";
    let transcript = loop {
        let n = stdout.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        let after = text.split_once(ASSISTANT).map(|(_, a)| a);
        if n == 0 || after.is_some_and(|a| a.contains(USER) || a.contains("(end of context)")) {
            break text;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    // Up to the first prompt after the reply (dllama repeats it for as long as it runs).
    let shown = match transcript.split_once(ASSISTANT) {
        Some((before, after)) => match after.split_once(USER) {
            Some((reply, _)) => format!("{before}{ASSISTANT}{reply}{USER}"),
            None => transcript.clone(),
        },
        None => transcript.clone(),
    };
    println!("{shown}");
    assert!(
        transcript.contains("BosId: 49135 (<|im_start|>)")
            && transcript.contains("SpecialVocabSize: 17"),
        "dllama does not see the chat markers as special tokens"
    );
    let (_, after) = transcript
        .split_once(ASSISTANT)
        .expect("dllama never answered");
    let (reply, _) = after
        .split_once(USER)
        .expect("the reply ran to the end of the context");
    let reply = reply.trim();
    assert!(!reply.is_empty(), "empty reply");
    assert!(
        !reply.contains("<|im_start|>") && !reply.contains("<|im_end|>"),
        "chat markers in the reply: {reply:?}"
    );
}

/// airllama generates the same text from the converted SmolLM2 as from the layout an earlier
/// converter wrote (GGUF ids, split-point `BOS_ID`), so the renumbering changes nothing for it.
#[test]
fn airllama_generates_the_same_text_as_with_the_earlier_layout() {
    use airllama::graph::SyncFloatType;
    use airllama::root::{Root, RootOptions, Step, generate};
    use airllama::sampler::Sampler;
    use airllama_io::convert::{ModelPlan, write_model};
    use airllama_kernels::backend::Backend;
    use airllama_kernels::block::FloatType;

    let Some(path) = smollm2_support::gguf() else {
        return;
    };
    let dir = scratch("earlier-layout");
    let gguf = GgufFile::open(&path).unwrap();
    let current_t = tokenizer_from_gguf(gguf.header()).unwrap();
    let plan = ModelPlan::from_gguf(gguf.header(), FloatType::Q40).unwrap();
    let mut earlier = plan.clone();
    for t in &mut earlier.tensors {
        t.row_order = None;
    }
    let files = [
        (plan, current_t.clone(), "current"),
        (earlier, in_gguf_order(&current_t).unwrap(), "earlier"),
    ];
    let mut texts = Vec::new();
    for (plan, tokenizer, name) in files {
        let m = dir.join(format!("{name}.m"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&m).unwrap());
        write_model(&gguf, &plan, &mut out, &mut |_, _| {}).unwrap();
        drop(out);
        let tokenizer = Tokenizer::from_file(&tokenizer);
        let backend = Backend::detect();
        let options = RootOptions {
            model: m,
            workers: Vec::new(),
            sync_type: SyncFloatType::Q80,
            max_seq_len: 128,
            n_threads: 1,
            turbo: false,
            backend,
            max_memory: u64::MAX,
            shared_storage: false,
            cache_dir: None,
            net_timeout: None,
        };
        let mut root = Root::open(&options, &mut |_| {}).unwrap();
        let prompt = tokenizer
            .encode(
                "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                true,
                true,
            )
            .unwrap();
        let mut sampler = Sampler::new(backend, tokenizer.vocab_size(), 0.0, 0.9, 1).unwrap();
        let mut picks = Vec::new();
        generate(
            &mut root,
            &prompt,
            prompt.len() as u32 + 24,
            &mut |l| sampler.sample(l).map_err(|e| e.to_string()),
            &mut |s| {
                if let Step::Pred { token, .. } = s {
                    picks.push(token);
                }
            },
        )
        .unwrap();
        root.finish().unwrap();
        texts.push(tokenizer.decode_all(&picks).unwrap());
    }
    println!("{texts:?}");
    assert!(!texts[0].trim().is_empty());
    assert_eq!(texts[0], texts[1]);
}
