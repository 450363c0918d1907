#!/usr/bin/env python3
"""Writes small GGUF models with random weights through the PyPI `gguf` package, laid out as
llama.cpp's convert_hf_to_gguf.py lays out the real ones, for io/tests/convert_models.rs.

Usage: tiny_models.py OUT.gguf KIND [SEED]

KIND:
  llama31     llama, head dim 128, rope theta 500000, and a `rope_freqs.weight` computed the way
              llama.cpp's converter computes it for Llama 3.1 (factor 8, low 1, high 4,
              original context 8192)
  llama32     the same with Llama 3.2's factor 32
  llama31-h16 Llama 3.1 numbers on a head dim of 16 (no frequency falls between the bands)
  llama-rope-odd  a table whose factor is not an integer (refused)
  llama-rope-bumpy  an increasing table that no Llama 3 parameters produce (refused)
  qwen3       qwen3 with q/k norms, its tensors in a mix of K-, IQ4 and 5-bit types
  qwen3moe    qwen3moe with 4 experts (2 used) stored as 3-D expert tensors

The tokenizer is GPT-2 byte-level BPE with Qwen's control tokens after the ordinary ones.
"""
import math
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

out_path, kind = sys.argv[1], sys.argv[2]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
rng = np.random.default_rng(seed)


def bytes_to_unicode():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def vocab():
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a")]
    tokens += [a + b for a, b in merges]
    types = [1] * len(tokens)
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]:
        tokens.append(special)
        types.append(3)
    return tokens, types, [f"{a} {b}" for a, b in merges]


# Byte offsets of the f16 scale fields of each block type (for random blocks).
F16_SCALES = {
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}


def tensor(values_shape, qtype, scale=0.02):
    """Random data of numpy shape `values_shape` (last axis contiguous) in `qtype`: values
    quantized by the package where it can, else random blocks with small scales."""
    if qtype in (T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        v = (rng.standard_normal(values_shape) * scale).astype(np.float32)
        if qtype == T.F32:
            return v, None
        if qtype == T.F16:
            return v.astype(np.float16), None
        return gguf.quants.quantize(v, qtype), qtype
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(values_shape)) // block
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in F16_SCALES[qtype]:
        d = (rng.uniform(0.2, 1.0, n_blocks) * scale / 16).astype(np.float16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
    shape = tuple(values_shape[:-1]) + (values_shape[-1] // block * size,)
    return raw.reshape(shape), qtype


def norm(n):
    return (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32)


def llama3_factors(head_dim, theta, factor, low, high, old_ctx):
    """rope_freqs.weight as llama.cpp's converter computes it (LlamaModel), in f32 numpy."""
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    low_wavelen = old_ctx / low
    high_wavelen = old_ctx / high
    out = []
    for freq in freqs:
        wavelen = np.float32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (np.float32(old_ctx) / wavelen - np.float32(low)) / np.float32(high - low)
            out.append(np.float32(1) / ((np.float32(1) - smooth) / np.float32(factor) + smooth))
    return np.array(out, dtype=np.float32)


arch = {"qwen3": "qwen3", "qwen3moe": "qwen3moe"}.get(kind, "llama")
w = gguf.GGUFWriter(out_path, arch)
tokens, types, merges = vocab()
n_vocab = len(tokens)

if arch == "llama":
    head_dim = 16 if kind == "llama31-h16" else 128
    dim, n_heads, n_kv, hidden, layers = 256, 256 // head_dim, max(1, 128 // head_dim), 512, 2
    theta = 500000.0
else:
    dim, head_dim, n_heads, n_kv, hidden, layers = 256, 64, 4, 2, 512, 2
    theta = 1000000.0
moe_hidden, n_experts, n_used = 256, 4, 2

w.add_name(f"tiny-{kind}")
w.add_block_count(layers)
w.add_context_length(131072 if arch == "llama" else 40960)
w.add_embedding_length(dim)
w.add_feed_forward_length(hidden)
w.add_head_count(n_heads)
w.add_head_count_kv(n_kv)
w.add_rope_freq_base(theta)
w.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
if arch == "llama":
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
else:
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
if arch == "qwen3moe":
    w.add_expert_count(n_experts)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(moe_hidden)

w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("qwen2" if arch != "llama" else "llama-bpe")
w.add_token_list(tokens)
w.add_token_types(types)
w.add_token_merges(merges)
w.add_bos_token_id(n_vocab - 3)
w.add_eos_token_id(n_vocab - 1)
w.add_add_bos_token(False)
w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")

q_dim, kv_dim = n_heads * head_dim, n_kv * head_dim


def add(name, values_shape, qtype, scale=0.02):
    data, raw = tensor(values_shape, qtype, scale)
    w.add_tensor(name, data, raw_dtype=raw)


add("token_embd.weight", (n_vocab, dim), T.Q8_0, 0.5)
if kind.startswith("llama"):
    if kind == "llama-rope-odd":
        factors = llama3_factors(head_dim, theta, 8, 1, 4, 8192)
        factors[factors == 8.0] = 7.5
    elif kind == "llama-rope-bumpy":
        factors = llama3_factors(head_dim, theta, 8, 1, 4, 8192)
        factors[31] = 1.8  # still increasing, but off the blend curve
    else:
        factor = 32 if kind == "llama32" else 8
        factors = llama3_factors(head_dim, theta, factor, 1, 4, 8192)
    w.add_tensor("rope_freqs.weight", factors)

layer_types = {
    "llama": [T.Q4_K, T.Q5_K, T.Q6_K, T.Q3_K, T.Q2_K, T.Q5_0, T.IQ4_XS],
    "qwen3": [T.Q4_K, T.Q5_K, T.Q6_K, T.Q3_K, T.Q2_K, T.Q5_1, T.IQ4_NL],
    "qwen3moe": [T.Q6_K, T.Q8_0, T.Q5_K, T.BF16, T.Q4_K, T.Q5_0, T.IQ4_XS],
}[arch]
for l in range(layers):
    tq, tk, tv, to, tg, td, tu = layer_types
    b = f"blk.{l}."
    w.add_tensor(b + "attn_norm.weight", norm(dim))
    add(b + "attn_q.weight", (q_dim, dim), tq)
    add(b + "attn_k.weight", (kv_dim, dim), tk)
    add(b + "attn_v.weight", (kv_dim, dim), tv)
    add(b + "attn_output.weight", (dim, q_dim), to)
    if arch != "llama":
        w.add_tensor(b + "attn_q_norm.weight", norm(head_dim))
        w.add_tensor(b + "attn_k_norm.weight", norm(head_dim))
    w.add_tensor(b + "ffn_norm.weight", norm(dim))
    if arch == "qwen3moe":
        w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_experts, dim)) * 0.1).astype(np.float32))
        add(b + "ffn_gate_exps.weight", (n_experts, moe_hidden, dim), tg)
        add(b + "ffn_down_exps.weight", (n_experts, dim, moe_hidden), td)
        add(b + "ffn_up_exps.weight", (n_experts, moe_hidden, dim), tu)
    else:
        add(b + "ffn_gate.weight", (hidden, dim), tg)
        add(b + "ffn_down.weight", (dim, hidden), td)
        add(b + "ffn_up.weight", (hidden, dim), tu)
w.add_tensor("output_norm.weight", norm(dim))
add("output.weight", (n_vocab, dim), T.Q6_K if arch != "qwen3moe" else T.Q4_0, 0.5)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"wrote {out_path} ({kind})")
