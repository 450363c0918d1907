#!/usr/bin/env python3
"""Writes the seed corpus of the `gguf` fuzz target: small GGUF files laid out by hand from the
GGUF spec (every metadata type; a one-layer llama with F32, F16, BF16, Q4_0, Q4_1, Q8_0 and Q6_K
tensors). The `tokenizer_file` seeds are the golden tokenizer and `airllama convert gguf` output
for tiny-llama.gguf. Run from the repository root: python3 fuzz/seeds/gguf.py"""
import struct, os

out_dir = os.path.join(os.path.dirname(__file__), "..", "corpus", "gguf")

def s(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack("<Q", len(b)) + b

def kv(key, ty, payload):
    return s(key) + struct.pack("<I", ty) + payload

def arr(elem, items, fmt=None):
    body = b"".join(s(i) for i in items) if elem == 8 else b"".join(struct.pack("<" + fmt, i) for i in items)
    return struct.pack("<IQ", elem, len(items)) + body

def gguf(kvs, tensors, align=32):
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    infos, datas, off = b"", [], 0
    for name, dims, ty, data in tensors:
        infos += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ty, off)
        datas.append((off, data))
        off = (off + len(data) + align - 1) // align * align
    head += infos
    head += b"\0" * ((-len(head)) % align)
    body = bytearray()
    for o, d in datas:
        body += b"\0" * (o - len(body)) + d
    return head + bytes(body)

def f16(x):
    return struct.pack("<e", x)

all_types = gguf([
    kv("u8", 0, b"\xc8"), kv("i8", 1, b"\xfe"), kv("u16", 2, struct.pack("<H", 65000)),
    kv("i16", 3, struct.pack("<h", -3000)), kv("u32", 4, struct.pack("<I", 7)),
    kv("i32", 5, struct.pack("<i", -7)), kv("f32", 6, struct.pack("<f", 1.5)), kv("bool", 7, b"\x01"),
    kv("str", 8, s("héllo")), kv("u64", 10, struct.pack("<Q", 1 << 40)),
    kv("i64", 11, struct.pack("<q", -5)), kv("f64", 12, struct.pack("<d", 0.1)),
    kv("strs", 9, arr(8, ["a", "", "bc"])), kv("ints", 9, arr(5, [1, -2], "i")),
    kv("nested", 9, struct.pack("<IQ", 9, 1) + arr(2, [1, 2], "H")),
], [])

dim, hidden, vocab = 32, 64, 8
tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "Ġ", "Ġa", "ab"]
types = [3, 3, 3, 1, 1, 1, 1, 1]
def q8(n): return b"".join(f16(0.01) + bytes((i * 7 + j) % 256 for j in range(32)) for i in range(n // 32))
def q40(n): return b"".join(f16(0.1) + bytes((i * 13 + j) % 256 for j in range(16)) for i in range(n // 32))
def q41(n): return b"".join(f16(0.1) + f16(-0.5) + bytes((i * 5 + j) % 256 for j in range(16)) for i in range(n // 32))
def f32s(n): return b"".join(struct.pack("<f", (i % 9) * 0.1 - 0.4) for i in range(n))
def f16s(n): return b"".join(f16((i % 9) * 0.1 - 0.4) for i in range(n))
def bf16s(n): return b"".join(struct.pack("<f", (i % 9) * 0.1 - 0.4)[2:] for i in range(n))
tiny = gguf([
    kv("general.architecture", 8, s("llama")),
    kv("llama.block_count", 4, struct.pack("<I", 1)),
    kv("llama.context_length", 4, struct.pack("<I", 64)),
    kv("llama.embedding_length", 4, struct.pack("<I", dim)),
    kv("llama.feed_forward_length", 4, struct.pack("<I", hidden)),
    kv("llama.attention.head_count", 4, struct.pack("<I", 2)),
    kv("llama.attention.head_count_kv", 4, struct.pack("<I", 1)),
    kv("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
    kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
    kv("tokenizer.ggml.model", 8, s("gpt2")),
    kv("tokenizer.ggml.tokens", 9, arr(8, tokens)),
    kv("tokenizer.ggml.token_type", 9, arr(5, types, "i")),
    kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1)),
    kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2)),
    kv("tokenizer.ggml.add_bos_token", 7, b"\x00"),
    kv("tokenizer.chat_template", 8, s("<|im_start|>{{m}}<|im_end|>")),
], [
    ("token_embd.weight", [dim, vocab], 8, q8(dim * vocab)),
    ("blk.0.attn_norm.weight", [dim], 0, f32s(dim)),
    ("blk.0.ffn_down.weight", [hidden, dim], 8, q8(hidden * dim)),
    ("blk.0.ffn_gate.weight", [dim, hidden], 3, q41(hidden * dim)),
    ("blk.0.ffn_up.weight", [dim, hidden], 2, q40(hidden * dim)),
    ("blk.0.ffn_norm.weight", [dim], 0, f32s(dim)),
    ("blk.0.attn_k.weight", [dim, 16], 1, f16s(16 * dim)),
    ("blk.0.attn_output.weight", [dim, dim], 30, bf16s(dim * dim)),
    ("blk.0.attn_q.weight", [dim, dim], 0, f32s(dim * dim)),
    ("blk.0.attn_v.weight", [dim, 16], 3, q41(16 * dim)),
    ("output_norm.weight", [dim], 0, f32s(dim)),
    ("extra_q6_k", [256], 14, bytes(210)),
])
os.makedirs(out_dir, exist_ok=True)
for name, data in [("all-metadata-types.gguf", all_types), ("tiny-llama.gguf", tiny)]:
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(data)
    print(name, len(data))
