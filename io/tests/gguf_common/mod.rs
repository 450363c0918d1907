//! A hand-written GGUF writer for tests, independent of the library's encoder: it lays out the
//! bytes as the GGUF spec describes them, so a reader bug cannot cancel out with a writer bug.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::{bf16, f16};

pub const T_U8: u32 = 0;
pub const T_I8: u32 = 1;
pub const T_U16: u32 = 2;
pub const T_I16: u32 = 3;
pub const T_U32: u32 = 4;
pub const T_I32: u32 = 5;
pub const T_F32: u32 = 6;
pub const T_BOOL: u32 = 7;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;
pub const T_U64: u32 = 10;
pub const T_I64: u32 = 11;
pub const T_F64: u32 = 12;

pub const G_F32: u32 = 0;
pub const G_F16: u32 = 1;
pub const G_Q4_0: u32 = 2;
pub const G_Q4_1: u32 = 3;
pub const G_Q8_0: u32 = 8;
pub const G_Q6_K: u32 = 14;
pub const G_BF16: u32 = 30;

pub fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

pub struct GgufBuilder {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<Tensor>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder {
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufBuilder {
    pub fn raw(&mut self, key: &str, ty: u32, value: Vec<u8>) -> &mut Self {
        self.kvs.retain(|(k, _, _)| k != key);
        self.kvs.push((key.to_string(), ty, value));
        self
    }
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|(k, _, _)| k != key);
        self
    }
    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.raw(key, T_U32, v.to_le_bytes().to_vec())
    }
    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.raw(key, T_F32, v.to_le_bytes().to_vec())
    }
    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.raw(key, T_BOOL, vec![u8::from(v)])
    }
    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.raw(key, T_STRING, string(v.as_bytes()))
    }
    pub fn array(&mut self, key: &str, elem: u32, n: usize, body: Vec<u8>) -> &mut Self {
        let mut v = elem.to_le_bytes().to_vec();
        v.extend_from_slice(&(n as u64).to_le_bytes());
        v.extend_from_slice(&body);
        self.raw(key, T_ARRAY, v)
    }
    pub fn str_array(&mut self, key: &str, items: &[&str]) -> &mut Self {
        let body = items.iter().flat_map(|s| string(s.as_bytes())).collect();
        self.array(key, T_STRING, items.len(), body)
    }
    pub fn i32_array(&mut self, key: &str, items: &[i32]) -> &mut Self {
        let body = items.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.array(key, T_I32, items.len(), body)
    }
    pub fn f32_array(&mut self, key: &str, items: &[f32]) -> &mut Self {
        let body = items.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.array(key, T_F32, items.len(), body)
    }
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self.tensors.push(Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        self
    }
    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self
    }

    /// The file: header, metadata, tensor infos, padding, then each tensor's data at the next
    /// multiple of the alignment.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kvs {
            out.extend_from_slice(&string(k.as_bytes()));
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(v);
        }
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            out.extend_from_slice(&string(t.name.as_bytes()));
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = align(offset + t.data.len() as u64);
        }
        let data_start = align(out.len() as u64);
        out.resize(data_start as usize, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

pub fn f32_data(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn f16_data(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
        .collect()
}
pub fn bf16_data(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect()
}
/// One Q4_0 block: scale, then value j in the low nibble of byte j and value j+16 in its high
/// nibble (ggml's block_q4_0).
pub fn q4_0_block(d: f32, codes: &[u8; 32]) -> Vec<u8> {
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
    out
}
/// One Q4_1 block: scale, minimum, nibbles as Q4_0 (ggml's block_q4_1).
pub fn q4_1_block(d: f32, m: f32, codes: &[u8; 32]) -> Vec<u8> {
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
    out.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
    out
}
/// One Q8_0 block: scale, 32 signed bytes (ggml's block_q8_0).
pub fn q8_0_block(d: f32, qs: &[i8; 32]) -> Vec<u8> {
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(qs.iter().map(|&q| q as u8));
    out
}

/// Deterministic pseudo-random numbers for test tensors.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    pub fn codes(&mut self) -> [u8; 32] {
        std::array::from_fn(|_| (self.next_u32() % 16) as u8)
    }
    pub fn signed(&mut self) -> [i8; 32] {
        std::array::from_fn(|_| (self.next_u32() % 255) as i32 as i8)
    }
    pub fn unit(&mut self) -> f32 {
        (self.next_u32() % 2001) as f32 / 1000.0 - 1.0
    }
}

/// Tensor data of `rows × cols` values in ggml type `ty`, built from random blocks.
pub fn random_tensor(rng: &mut Lcg, ty: u32, rows: u64, cols: u64) -> Vec<u8> {
    let n = (rows * cols) as usize;
    match ty {
        G_F32 => f32_data(&(0..n).map(|_| rng.unit()).collect::<Vec<_>>()),
        G_F16 => f16_data(&(0..n).map(|_| rng.unit()).collect::<Vec<_>>()),
        G_BF16 => bf16_data(&(0..n).map(|_| rng.unit()).collect::<Vec<_>>()),
        G_Q4_0 => (0..n / 32)
            .flat_map(|_| q4_0_block(rng.unit() * 0.1, &rng.codes()))
            .collect(),
        G_Q4_1 => (0..n / 32)
            .flat_map(|_| q4_1_block(rng.unit() * 0.1, rng.unit() * 0.5, &rng.codes()))
            .collect(),
        G_Q8_0 => (0..n / 32)
            .flat_map(|_| q8_0_block(rng.unit() * 0.01, &rng.signed()))
            .collect(),
        G_Q6_K => vec![0u8; n / 256 * 210],
        _ => panic!("no generator for type {ty}"),
    }
}

pub const TINY_DIM: u64 = 64;
pub const TINY_HIDDEN: u64 = 96;
pub const TINY_HEADS: u64 = 4;
pub const TINY_KV_HEADS: u64 = 2;
pub const TINY_LAYERS: u64 = 2;
pub const TINY_HEAD_DIM: u64 = 16;

/// Tiny vocabulary in GGUF's GPT-2 form: specials first (SmolLM2 style), then the 256 byte
/// tokens in byte-to-unicode form, then a few merges.
pub fn tiny_vocab() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    let mut types = vec![3, 3, 3];
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut n = 0;
    for b in 0u32..256 {
        let c = if printable(b) {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(0x100 + n - 1).unwrap()
        };
        tokens.push(c.to_string());
        types.push(1);
    }
    for merge in ["Ġt", "he", "Ġthe", "Ã©"] {
        tokens.push(merge.into());
        types.push(1);
    }
    (tokens, types)
}

/// A complete tiny llama GGUF: every tensor type the converter reads appears at least once.
pub fn tiny_llama() -> GgufBuilder {
    let (tokens, types) = tiny_vocab();
    let vocab = tokens.len() as u64;
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut g = GgufBuilder::default();
    g.str("general.architecture", "llama")
        .str("general.name", "tiny")
        .u32("llama.block_count", TINY_LAYERS as u32)
        .u32("llama.context_length", 128)
        .u32("llama.embedding_length", TINY_DIM as u32)
        .u32("llama.feed_forward_length", TINY_HIDDEN as u32)
        .u32("llama.attention.head_count", TINY_HEADS as u32)
        .u32("llama.attention.head_count_kv", TINY_KV_HEADS as u32)
        .f32("llama.rope.freq_base", 100000.0)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .u32("llama.vocab_size", vocab as u32)
        .u32("llama.rope.dimension_count", TINY_HEAD_DIM as u32)
        .str("tokenizer.ggml.model", "gpt2")
        .str_array("tokenizer.ggml.tokens", &token_refs)
        .i32_array("tokenizer.ggml.token_type", &types)
        .str_array("tokenizer.ggml.merges", &["Ġ t", "h e", "Ġt he"])
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .bool("tokenizer.ggml.add_bos_token", false)
        .str(
            "tokenizer.chat_template",
            "{% for m in messages %}<|im_start|>{{m}}<|im_end|>{% endfor %}",
        );
    let mut rng = Lcg(7);
    let (d, h, q, kv) = (
        TINY_DIM,
        TINY_HIDDEN,
        TINY_HEADS * TINY_HEAD_DIM,
        TINY_KV_HEADS * TINY_HEAD_DIM,
    );
    let mut add = |g: &mut GgufBuilder, name: &str, ty: u32, rows: u64, cols: u64| {
        let data = random_tensor(&mut rng, ty, rows, cols);
        let dims: Vec<u64> = if rows == 1 {
            vec![cols]
        } else {
            vec![cols, rows]
        };
        g.tensor(name, &dims, ty, data);
    };
    add(&mut g, "token_embd.weight", G_Q8_0, vocab, d);
    for l in 0..TINY_LAYERS {
        add(&mut g, &format!("blk.{l}.attn_norm.weight"), G_F32, 1, d);
        add(&mut g, &format!("blk.{l}.ffn_down.weight"), G_Q8_0, d, h);
        add(&mut g, &format!("blk.{l}.ffn_gate.weight"), G_Q4_1, h, d);
        add(&mut g, &format!("blk.{l}.ffn_up.weight"), G_Q4_0, h, d);
        add(&mut g, &format!("blk.{l}.ffn_norm.weight"), G_F32, 1, d);
        add(&mut g, &format!("blk.{l}.attn_k.weight"), G_F16, kv, d);
        add(&mut g, &format!("blk.{l}.attn_output.weight"), G_BF16, d, q);
        add(&mut g, &format!("blk.{l}.attn_q.weight"), G_F32, q, d);
        add(&mut g, &format!("blk.{l}.attn_v.weight"), G_Q4_1, kv, d);
    }
    add(&mut g, "output_norm.weight", G_F32, 1, d);
    add(&mut g, "output.weight", G_Q4_0, vocab, d);
    g
}

/// Prefix of the per-process scratch directories under the system temp dir.
const SCRATCH_PREFIX: &str = "airllama-io-tests-";

fn scratch_dir_of(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{pid}"))
}

/// A unique temporary path for this test process, in a scratch directory that is removed when
/// the test binary exits: a static is never dropped, so the removal is an `atexit` hook (the
/// test harness ends with `exit`, pass or fail). A binary killed before it could clean up
/// leaves its directory; the next binary to call this removes those of dead processes.
pub fn temp_path(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        remove_dead_scratch_dirs();
        let dir = scratch_dir_of(std::process::id());
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY: registers a function that takes no arguments and never unwinds (it ignores
        // every error); it only touches the file system.
        let rc = unsafe { libc::atexit(remove_scratch_dir) };
        assert_eq!(rc, 0, "atexit refused the scratch dir's cleanup");
        dir
    })
    .join(name)
}

/// Runs at exit: removes this process's scratch directory.
extern "C" fn remove_scratch_dir() {
    let _ = std::fs::remove_dir_all(scratch_dir_of(std::process::id()));
}

/// Removes the scratch directories of processes that no longer exist.
fn remove_dead_scratch_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 sends nothing; it only asks whether `pid` exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Run by `scratch_dir_is_removed_at_exit` in a child process: uses a temp path and prints
/// its directory; does nothing otherwise.
#[test]
fn scratch_dir_child() {
    if std::env::var_os("AIRLLAMA_SCRATCH_CHILD").is_none() {
        return;
    }
    let path = temp_path("child.bin");
    std::fs::write(&path, b"scratch").unwrap();
    println!("SCRATCH-DIR {}", path.parent().unwrap().display());
}

/// A test binary that used a temp path leaves no directory once it exits, and removes the
/// directory a dead binary left.
#[test]
fn scratch_dir_is_removed_at_exit() {
    // No process has this pid (it is above any `pid_max`): a dead binary's leftover.
    let stale = scratch_dir_of(i32::MAX as u32);
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("left.bin"), b"old").unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "gguf_common::scratch_dir_child", "--nocapture"])
        .env("AIRLLAMA_SCRATCH_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SCRATCH-DIR "))
        .unwrap_or_else(|| panic!("the child printed no directory: {stdout}"));
    assert!(dir.contains(SCRATCH_PREFIX), "unexpected scratch dir {dir}");
    assert!(!Path::new(dir).exists(), "{dir} outlived its test binary");
    assert!(!stale.exists(), "{} was not cleaned up", stale.display());
}
