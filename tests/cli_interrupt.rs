//! `airllama gen-model` and `airllama convert` leave no output behind when they do not finish:
//! interrupted by SIGINT or SIGTERM while writing (the process still dies of the signal), or
//! failing with a write error. Each case starts the real binary on an output big enough that
//! it is still writing when the signal comes, waits for the `.partial` file to hold bytes, and
//! then checks that neither the partial file nor the target exists.
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airllama_io::gguf::{GgmlType, GgufArray, GgufHeader, GgufValue, TensorInfo};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli_interrupt")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn airllama(args: &[&str], out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airllama"));
    c.args(args)
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A test harness started in the background of a non-interactive shell inherits SIGINT
    // ignored, and an ignored signal survives exec: the command would then (rightly) leave
    // Ctrl-C alone and the test would measure the harness, not the command.
    // SAFETY: runs in the forked child before exec; `signal` is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        })
    };
    c
}

/// Waits until `file` exists and holds bytes (the command is writing it), failing if `child`
/// exits first.
fn wait_for_bytes(child: &mut Child, file: &Path) {
    let started = Instant::now();
    loop {
        if std::fs::metadata(file).is_ok_and(|m| m.len() > 0) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "exited ({status}) before {} held any bytes: the output is too small to interrupt",
                file.display()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} never appeared",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends `signal` once `partial` holds bytes; checks the process died of that signal and left
/// none of `outputs` nor their partial files.
fn interrupt(mut command: Command, watched: &Path, outputs: &[&Path], signal: i32) {
    let mut child = command.spawn().unwrap();
    wait_for_bytes(&mut child, watched);
    // SAFETY: `kill` only sends a signal to the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(signal),
        "expected death by signal {signal}, got {}: {stderr}",
        out.status
    );
    for path in outputs {
        assert!(!partial(path).exists(), "{} left", partial(path).display());
        assert!(!path.exists(), "{} left", path.display());
    }
}

/// A Llama-2-7B-shaped model cut to 4 layers (about 1 GB): long enough to write that it is
/// interrupted after a few MiB.
const BIG_MODEL: &[&str] = &[
    "gen-model",
    "--preset",
    "llama2-7b",
    "--layers",
    "4",
    "--seq-len",
    "128",
    "--output",
];

#[test]
fn gen_model_interrupted_leaves_no_file() {
    let dir = scratch("gen_model");
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let model = dir.join(format!("big-{signal}.m"));
        interrupt(
            airllama(BIG_MODEL, &model),
            &partial(&model),
            &[&model],
            signal,
        );
    }
}

#[test]
fn gen_model_write_error_leaves_no_file() {
    let dir = scratch("gen_model_error");
    let model = dir.join("big.m");
    let mut command = airllama(BIG_MODEL, &model);
    // SAFETY: runs in the forked child before exec and only calls `setrlimit` and `signal`,
    // both async-signal-safe, on the child's own state.
    unsafe {
        command.pre_exec(|| {
            // Files may grow to 4 MiB; past that `write` fails with EFBIG (SIGXFSZ, which would
            // kill the process instead, is ignored, and an ignored signal survives exec).
            let limit = libc::rlimit {
                rlim_cur: 4 << 20,
                rlim_max: 4 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        })
    };
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}: {stderr}", out.status);
    assert!(stderr.contains("big.m.partial"), "{stderr}");
    assert!(!partial(&model).exists(), "{stderr}");
    assert!(!model.exists(), "{stderr}");
}

/// The 259-token byte-level vocabulary of a GPT-2 style tokenizer: three specials, then the
/// 256 byte tokens in their byte-to-unicode spelling.
fn byte_vocab() -> Vec<Vec<u8>> {
    let mut tokens: Vec<Vec<u8>> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut shifted = 0x100;
    for b in 0u32..256 {
        let c = if printable(b) {
            char::from_u32(b).unwrap()
        } else {
            shifted += 1;
            char::from_u32(shifted - 1).unwrap()
        };
        tokens.push(c.to_string().into_bytes());
    }
    tokens
}

/// Writes a llama GGUF of f32 tensors (dim 2048, hidden 5632, 4 layers: about 0.8 GB) whose
/// tensor data is a hole: the file takes no disk space, yet converting it quantizes every
/// value, which takes long enough to be interrupted.
fn sparse_llama_gguf(path: &Path) {
    let (dim, hidden, layers, heads) = (2048u64, 5632u64, 4u32, 16u32);
    let tokens = byte_vocab();
    let vocab = tokens.len() as u64;
    let u32v = |v: u32| GgufValue::U32(v);
    let metadata: Vec<(String, GgufValue)> = vec![
        ("general.architecture", GgufValue::String(b"llama".to_vec())),
        ("llama.block_count", u32v(layers)),
        ("llama.context_length", u32v(128)),
        ("llama.embedding_length", u32v(dim as u32)),
        ("llama.feed_forward_length", u32v(hidden as u32)),
        ("llama.attention.head_count", u32v(heads)),
        ("llama.attention.head_count_kv", u32v(heads)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        ),
        ("llama.vocab_size", u32v(vocab as u32)),
        ("tokenizer.ggml.model", GgufValue::String(b"gpt2".to_vec())),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(GgufArray::String(tokens.clone())),
        ),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(GgufArray::I32(
                (0..vocab).map(|i| if i < 3 { 3 } else { 1 }).collect(),
            )),
        ),
        (
            "tokenizer.ggml.merges",
            GgufValue::Array(GgufArray::String(Vec::new())),
        ),
        ("tokenizer.ggml.bos_token_id", u32v(1)),
        ("tokenizer.ggml.eos_token_id", u32v(2)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut tensors = Vec::new();
    let mut offset = 0u64;
    let mut add = |name: String, dims: Vec<u64>| {
        let n: u64 = dims.iter().product();
        tensors.push(TensorInfo {
            name,
            dims,
            ty: GgmlType(0),
            offset,
            n_elements: n,
            n_bytes: Some(n * 4),
        });
        offset += (n * 4).next_multiple_of(32);
    };
    add("token_embd.weight".into(), vec![dim, vocab]);
    for l in 0..layers {
        add(format!("blk.{l}.attn_norm.weight"), vec![dim]);
        add(format!("blk.{l}.attn_q.weight"), vec![dim, dim]);
        add(format!("blk.{l}.attn_k.weight"), vec![dim, dim]);
        add(format!("blk.{l}.attn_v.weight"), vec![dim, dim]);
        add(format!("blk.{l}.attn_output.weight"), vec![dim, dim]);
        add(format!("blk.{l}.ffn_norm.weight"), vec![dim]);
        add(format!("blk.{l}.ffn_gate.weight"), vec![dim, hidden]);
        add(format!("blk.{l}.ffn_up.weight"), vec![dim, hidden]);
        add(format!("blk.{l}.ffn_down.weight"), vec![hidden, dim]);
    }
    add("output_norm.weight".into(), vec![dim]);
    add("output.weight".into(), vec![dim, vocab]);
    let header = GgufHeader {
        version: 3,
        metadata,
        tensors,
        alignment: 32,
        data_offset: 0,
    };
    let bytes = header.encode();
    let file = std::fs::File::create(path).unwrap();
    std::io::Write::write_all(&mut &file, &bytes).unwrap();
    file.set_len(bytes.len() as u64 + offset).unwrap();
}

#[test]
fn convert_interrupted_leaves_no_file() {
    let dir = scratch("convert");
    let gguf = dir.join("sparse.gguf");
    sparse_llama_gguf(&gguf);
    let (model, tokenizer) = (dir.join("out.m"), dir.join("out.t"));
    let mut command = airllama(&["convert", "gguf"], &gguf);
    command
        .arg(&model)
        .arg(&tokenizer)
        .args(["--weights", "q40", "--quiet"]);
    interrupt(
        command,
        &partial(&model),
        &[&model, &tokenizer],
        libc::SIGINT,
    );
    std::fs::remove_file(&gguf).unwrap();
}
