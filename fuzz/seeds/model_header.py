#!/usr/bin/env python3
"""Writes the model_header seed corpus (fuzz/corpus/model_header/) from ../shared/golden.

Each golden model.m gives: its bare header (the layout then sees a file far too short), its
header with the first 1 KiB of tensors, and a tiny complete model: the golden header with the
dimensions rewritten small (key order kept) and the golden file's own tensor bytes cut to the
size the new header implies, so the fuzzer starts from inputs whose layout and node splits are
valid. Run from the repository root: python3 fuzz/seeds/model_header.py
"""
import os
import struct

GOLDEN = os.path.join('..', 'shared', 'golden')
OUT = os.path.join('fuzz', 'corpus', 'model_header')

# Small dimensions per key code: dim 2, hidden_dim 3, n_layers 4, n_heads 5, n_kv_heads 6,
# n_experts 7, n_active_experts 8, vocab 9, head_dim 19, moe_hidden_dim 21. Q40 rows must be
# whole 32-value blocks, and q_dim 64 / ffn 64 let the tiny Q40 models split over 2 nodes
# (each wo / w2 column slice one whole block).
SMALL_Q40 = {2: 32, 3: 64, 4: 1, 5: 4, 6: 2, 7: 2, 8: 1, 9: 4, 19: 16, 21: 64}
SMALL_F32 = {2: 8, 3: 8, 4: 1, 5: 2, 6: 2, 9: 4}


def tensor_bytes(h, weight):
    """Total tensor bytes the header implies (same order and sizes as io/src/layout.rs)."""
    def size(rows, cols, ftype):
        return rows * (cols * 4 if ftype == 0 else cols // 32 * 18)
    dim, vocab, layers = h[2], h[9], h[4]
    head_dim = h.get(19) or dim // h[5]
    q, kv = head_dim * h[5], head_dim * h[6]
    moe = h[1] == 0xABCD02
    ffn = h.get(21, 0) if moe else h[3]
    layer = size(q, dim, weight) + 2 * size(kv, dim, weight) + size(dim, q, weight)
    experts = h.get(7, 0)
    if experts:
        layer += size(experts, dim, 0)
    layer += max(experts, 1) * (2 * size(ffn, dim, weight) + size(dim, ffn, weight))
    if h[1] in (0xABCD01, 0xABCD02):
        layer += 2 * size(1, head_dim, 0)
    layer += 2 * size(1, dim, 0)
    return size(vocab, dim, 0) + layers * layer + size(1, dim, 0) + size(vocab, dim, weight)


def main():
    os.makedirs(OUT, exist_ok=True)
    for variant in sorted(os.listdir(GOLDEN)):
        path = os.path.join(GOLDEN, variant, 'model.m')
        if not os.path.isfile(path):
            continue
        data = open(path, 'rb').read()
        header_size = struct.unpack_from('<i', data, 4)[0]
        open(os.path.join(OUT, f'{variant}-header'), 'wb').write(data[:header_size])
        open(os.path.join(OUT, f'{variant}-header-1k'), 'wb').write(data[:header_size + 1024])
        pairs = [struct.unpack_from('<ii', data, o) for o in range(8, header_size, 8)]
        table = dict(SMALL_F32 if dict(pairs)[13] == 0 else SMALL_Q40)
        if dict(pairs)[1] == 0xABCD00 and dict(pairs)[13] != 0:
            table[2] = 64  # Llama has no head_dim key: 4 heads of 16 need dim 64.
        # Zero stays zero (no experts in dense models).
        small = [(k, table.get(k, v) if v else v) for k, v in pairs]
        h = dict(small)
        body = tensor_bytes(h, h[13])
        out = data[:8] + b''.join(struct.pack('<ii', k, v) for k, v in small)
        out += data[header_size:header_size + body]
        open(os.path.join(OUT, f'{variant}-tiny'), 'wb').write(out)


if __name__ == '__main__':
    main()
