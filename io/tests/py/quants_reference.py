#!/usr/bin/env python3
"""Writes a GGUF file of random blocks of every ggml type airllama dequantizes, each tensor
followed by "<name>.ref": its dequantization by the PyPI `gguf` package
(`gguf.quants.dequantize`), as F32. io/tests/gguf_quants.rs compares airllama's dequantizers
with these bit for bit.

Usage: quants_reference.py OUT.gguf [SEED]

Blocks come from two sources, concatenated per type:
* `gguf.quants.quantize` of random values (normal, with zeros, tiny and large values mixed in)
  for the types the package can quantize;
* random bytes for every type, with each f16 scale field overwritten by a random finite f16
  (random scale bytes would be NaN or infinity now and then, which the converter refuses
  anyway), so every code, sub-scale and bit pattern is exercised.

Q8_K has no dequantizer in the package (ggml never stores it in model files); its reference
is numpy's f32 `d * q`, ggml's definition. IQ2_XXS is included to check that a type airllama
does not dequantize is refused by name.
"""
import sys
from importlib.metadata import version

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

out_path = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
rng = np.random.default_rng(seed)
# MXFP4's largest exponents overflow to infinity, in the reference as in airllama: no warning.
np.seterr(over="ignore")

# Byte offsets of the f16 scale fields in one block of each type.
F16_SCALES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0], T.TQ1_0: [52], T.TQ2_0: [64], T.MXFP4: [],
    T.Q8_K: [], T.IQ2_XXS: [0],
}
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.TQ1_0, T.TQ2_0, T.MXFP4]
RAW_ROWS = 48


def random_values(rows, cols):
    v = rng.standard_normal((rows, cols)).astype(np.float32)
    v[rng.random(v.shape) < 0.05] = 0.0
    v[0] = 0.0  # an all-zero row: zero scales
    v[1] *= np.float32(1e-6)
    v[2] *= np.float32(100.0)
    return v


def random_f16(n):
    # Finite, both signs, from subnormal to large.
    mag = np.exp(rng.uniform(np.log(1e-6), np.log(60000.0), n))
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    h = (mag * sign).astype(np.float16)
    h[rng.random(n) < 0.05] = np.float16(0.0)
    return h


def random_blocks(qtype, rows, blocks_per_row):
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows * blocks_per_row, size), dtype=np.uint8)
    for off in F16_SCALES[qtype]:
        raw[:, off:off + 2] = random_f16(raw.shape[0]).view(np.uint8).reshape(-1, 2)
    if qtype == T.Q8_K:
        d = (rng.standard_normal(raw.shape[0]) * 0.01).astype(np.float32)
        raw[:, 0:4] = d.view(np.uint8).reshape(-1, 4)
    return raw.reshape(rows, blocks_per_row * size)


def reference(qtype, data):
    if qtype == T.Q8_K:
        blocks = data.reshape(-1, 292)
        d = blocks[:, 0:4].copy().view(np.float32)
        q = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(data.shape[0], -1)
    return gguf.quants.dequantize(data, qtype)


writer = gguf.GGUFWriter(out_path, "quants")
for qtype in [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K,
              T.Q5_K, T.Q6_K, T.Q8_K, T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.MXFP4,
              T.IQ2_XXS]:
    block, size = GGML_QUANT_SIZES[qtype]
    cols = 512  # two K super-blocks, sixteen 32-value blocks per row
    name = qtype.name.lower()
    if qtype in (T.F16, T.BF16):
        values = random_values(RAW_ROWS, cols)
        data = gguf.quants.quantize(values, qtype) if qtype == T.BF16 else values.astype(np.float16)
        data = data.view(np.uint8).reshape(RAW_ROWS, -1)
    else:
        parts = [random_blocks(qtype, RAW_ROWS, cols // block)]
        if qtype in QUANTIZABLE:
            parts.insert(0, gguf.quants.quantize(random_values(RAW_ROWS, cols), qtype))
        data = np.concatenate(parts, axis=0)
    ref = reference(qtype, data)
    assert ref.dtype == np.float32 and ref.shape == (data.shape[0], cols), (qtype, ref.shape)
    writer.add_tensor(name, data, raw_dtype=qtype)
    writer.add_tensor(name + ".ref", np.ascontiguousarray(ref))

writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
print(f"wrote {out_path}: gguf {version('gguf')}, numpy {np.__version__}")
