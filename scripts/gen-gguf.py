#!/usr/bin/env python3
"""Write an airllama/dllama `.m` model (Q40 or F32 llama) as a llama-architecture GGUF.

The GGUF holds the very same weights, so llama.cpp, C++ dllama and airllama can be compared on
identical bytes at any shape (`airllama gen-model` writes random models of any shape):

* Q40 matrices are ggml Q4_0 blocks already (f16 scale + 16 bytes of nibbles, 18 bytes per 32
  values, low nibbles = values 0..15, high nibbles = values 16..31): they are copied unchanged.
* F32 tensors (embedding, norms, and the matrices of an F32 model) are copied unchanged.
* q and k rows keep their order: `airllama convert gguf` maps llama GGUF rows to `.m` rows without
  a permutation (docs/CONVERT.md, "No q/k permutation"), so the inverse is the identity too.
* Tokenizer: by default a synthetic SentencePiece ("llama") vocabulary of the model's size: <unk>,
  the 256 byte tokens, single printable ASCII characters, fillers "[n]", then <s> and </s> as the
  last two ids (so `airllama convert gguf` keeps the true bos for dllama). A prompt of N lowercase
  letters and spaces encodes to about one token per character. `--vocab-from X.gguf` copies the
  `tokenizer.*` keys of a real GGUF instead (same vocabulary size required).
* Token order: when a GGUF's token order breaks dllama's rule (special tokens must hold the
  highest ids; SmolLM2's 17 control tokens are ids 0..=16), `airllama convert gguf` renumbers
  the tokens, moves the embedding and classifier rows with them, and records the renumbering (an
  id map, "AIRLLIDS") in the `.t` file it writes with the `.m`. With `--vocab-from`, this script
  reads that map from the `.t` (`--tokenizer T.t`, default: the `.t` beside the `.m`) and puts
  the rows of `token_embd.weight` and `output.weight` back at the GGUF's token ids, so the GGUF
  is consistent with the copied vocabulary. It checks that the `.t` holds exactly that
  vocabulary under the map, and refuses when the vocabulary would be renumbered but no `.t` is
  found (`--rows-in-gguf-order` if the `.m`'s rows are already in the GGUF's order: a
  `gen-model` model, or a `.m` converted before the renumbering). When the GGUF of
  `--vocab-from` holds an embedding of the same shape (the model the `.m` came from), the written
  embedding is compared with it row by row, which catches a wrong or missing map.

After writing, the GGUF is read back with `gguf.GGUFReader` and every tensor is compared byte for
byte with its `.m` region, rows put back by the id map compared row by row (skip with
--no-verify).

`--compare A.m B.m` compares the tensors of two `.m` files (e.g. a model and its round trip through
this script and `airllama convert gguf`). The converter dequantizes and re-quantizes Q40 with
dllama's rounding, which gives back the same block only for blocks dllama's quantizer can produce
(one code is 0, the extreme value). Random blocks from `gen-model` without a 0 nibble come back
re-quantized: --compare checks that every differing block is exactly dllama's re-quantization of
the original, so the only change is the converter's, not this script's.

Usage (numpy and the PyPI `gguf` package, e.g. in a venv under .cache/):
    python3 -m venv .cache/venv && .cache/venv/bin/pip install gguf numpy
    .cache/venv/bin/python scripts/gen-gguf.py model.m model.gguf [--vocab-from real.gguf
        [--tokenizer model.t | --rows-in-gguf-order]]
    .cache/venv/bin/python scripts/gen-gguf.py --compare model.m roundtrip.m
"""
import argparse
import os
import struct
import sys

import numpy as np

MAGIC = 0x0A00ABCD
ARCH_LLAMA = 0x00ABCD00
KEYS = {
    0: "version", 1: "arch_type", 2: "dim", 3: "hidden_dim", 4: "n_layers", 5: "n_heads",
    6: "n_kv_heads", 7: "n_experts", 8: "n_active_experts", 9: "vocab_size", 10: "seq_len",
    11: "hidden_act", 12: "rope_theta", 13: "weight_type", 14: "rope_scaling_factor",
    15: "rope_scaling_low_freq_factor", 16: "rope_scaling_high_freq_factor",
    17: "rope_scaling_orig_max_seq_len", 18: "rope_type", 19: "head_dim", 20: "norm_epsilon",
    21: "moe_hidden_dim",
}
F32, Q40 = 0, 2
Q40_BYTES = 18
BLOCK = 32
# The `.t` file (io/src/tokenizer_file.rs): magics, the header keys this script reads, the id map.
TOKENIZER_MAGIC, OLD_TOKENIZER_MAGIC = 0x567124, 0x567123
T_VOCAB_SIZE, T_CHAT_TEMPLATE, T_CHAT_STOP, T_N_EOS = 1, 7, 8, 9
ID_MAP_MAGIC = b"AIRLLIDS"
ID_MAP_VERSION = 1
# GGUF token types that dllama must see as special (control, user-defined).
SPECIAL_TYPES = (3, 4)
# The tensors whose rows are token ids.
TOKEN_ROWS = ("embedding", "classifier")


class ModelError(Exception):
    pass


def read_header(path):
    """dllama's loadLlmHeader: defaults, the pairs, derived dims."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelError(f"{path}: too short for a .m header")
        magic, size = struct.unpack("<iI", head)
        if magic & 0xFFFFFFFF != MAGIC:
            raise ModelError(f"{path}: not a .m model (magic {magic & 0xFFFFFFFF:#x})")
        if size < 8 or size > 4096 or (size - 8) % 8:
            raise ModelError(f"{path}: bad header size {size}")
        body = f.read(size - 8)
    if len(body) != size - 8:
        raise ModelError(f"{path}: truncated header")
    c = dict(version=0, hidden_act=1, rope_theta=10000, rope_type=0, head_dim=0,
             norm_epsilon=5, n_experts=0, n_active_experts=0, moe_hidden_dim=0,
             rope_scaling_factor=1)
    present = []
    for i in range(0, len(body), 8):
        key, value = struct.unpack_from("<ii", body, i)
        if key not in KEYS:
            raise ModelError(f"{path}: unknown header key {key}")
        c[KEYS[key]] = value
        present.append(KEYS[key])
    for k in ("arch_type", "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
              "vocab_size", "seq_len", "weight_type"):
        if k not in c:
            raise ModelError(f"{path}: header lacks {k}")
    if c["arch_type"] != ARCH_LLAMA:
        raise ModelError(f"{path}: only the llama architecture is supported")
    if c["n_experts"]:
        raise ModelError(f"{path}: mixture-of-experts models are not supported")
    if c["hidden_act"] != 1:
        raise ModelError(f"{path}: only SiLU is supported (llama.cpp's llama is SiLU)")
    if "rope_scaling_orig_max_seq_len" in present or c["rope_type"] != 0:
        raise ModelError(f"{path}: RoPE scaling / non-llama RoPE is not supported")
    if c["weight_type"] not in (F32, Q40):
        raise ModelError(f"{path}: weight type {c['weight_type']} (only f32 and q40)")
    if c["norm_epsilon"] not in (5, 6):
        raise ModelError(f"{path}: norm epsilon code {c['norm_epsilon']}")
    if c["head_dim"] == 0:
        c["head_dim"] = c["dim"] // c["n_heads"]
    c["explicit_head_dim"] = "head_dim" in present and c["head_dim"] * c["n_heads"] != c["dim"]
    c["q_dim"] = c["head_dim"] * c["n_heads"]
    c["kv_dim"] = c["head_dim"] * c["n_kv_heads"]
    c["header_size"] = size
    return c


def layout(c):
    """(gguf name, role, rows, cols, float type, offset, size) in .m file order."""
    w = c["weight_type"]
    out = []
    off = c["header_size"]

    def push(name, role, rows, cols, ft):
        nonlocal off
        size = rows * cols * 4 if ft == F32 else rows * (cols // BLOCK) * Q40_BYTES
        if ft == Q40 and cols % BLOCK:
            raise ModelError(f"{name}: {cols} values per row is not whole Q40 blocks")
        out.append((name, role, rows, cols, ft, off, size))
        off += size

    d, h, q, kv = c["dim"], c["hidden_dim"], c["q_dim"], c["kv_dim"]
    push("token_embd.weight", "embedding", c["vocab_size"], d, F32)
    for i in range(c["n_layers"]):
        b = f"blk.{i}."
        push(b + "attn_q.weight", "q", q, d, w)
        push(b + "attn_k.weight", "k", kv, d, w)
        push(b + "attn_v.weight", "v", kv, d, w)
        push(b + "attn_output.weight", "wo", d, q, w)
        push(b + "ffn_gate.weight", "w1", h, d, w)
        push(b + "ffn_down.weight", "w2", d, h, w)
        push(b + "ffn_up.weight", "w3", h, d, w)
        push(b + "attn_norm.weight", "attn_norm", 1, d, F32)
        push(b + "ffn_norm.weight", "ffn_norm", 1, d, F32)
    push("output_norm.weight", "final_norm", 1, d, F32)
    push("output.weight", "classifier", c["vocab_size"], d, w)
    return out, off


def open_model(path):
    c = read_header(path)
    tensors, end = layout(c)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size != end:
        raise ModelError(f"{path}: {data.size} bytes, the header implies {end}")
    return c, tensors, data


def tensor_array(data, t):
    """The tensor's region as the array GGUFWriter.add_tensor wants (numpy shape = rows, cols)."""
    name, role, rows, cols, ft, off, size = t
    raw = data[off:off + size]
    if ft == F32:
        arr = raw.view(np.float32)
        return arr.reshape(cols) if rows == 1 else arr.reshape(rows, cols)
    return raw.reshape(rows, (cols // BLOCK) * Q40_BYTES)


def synthetic_vocab(n):
    """A SentencePiece-style vocabulary of exactly n tokens (n >= 259 + 2 specials)."""
    from gguf import TokenType
    if n < 300:
        raise ModelError(f"vocabulary of {n} is too small for the synthetic tokenizer (>= 300)")
    tokens, types = ["<unk>"], [TokenType.UNKNOWN]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    chars = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    tokens += chars
    types += [TokenType.NORMAL] * len(chars)
    i = 0
    while len(tokens) < n - 2:
        tokens.append(f"[{i}]")
        types.append(TokenType.NORMAL)
        i += 1
    tokens += ["<s>", "</s>"]
    types += [TokenType.CONTROL, TokenType.CONTROL]
    # Single characters first in merge rank; fillers never merge with prompt text (they hold
    # brackets), so a prompt of letters is one token per character.
    scores = [0.0] * len(tokens)
    for j in range(257, len(tokens) - 2):
        scores[j] = -float(j)
    return tokens, scores, types


def source_vocab(reader, src_path, n):
    """The `tokenizer.*` fields of the --vocab-from GGUF, checked against the model's size."""
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    toks = fields.get("tokenizer.ggml.tokens")
    if toks is None:
        raise ModelError(f"{src_path}: no tokenizer.ggml.tokens")
    if len(toks.data) != n:
        raise ModelError(f"{src_path}: {len(toks.data)} tokens, the model has {n}")
    return fields


def copy_vocab(writer, fields):
    from gguf import GGUFValueType
    for key, f in fields.items():
        main = f.types[0]
        if main == GGUFValueType.ARRAY:
            writer.add_key_value(key, f.contents(), main, f.types[-1])
        else:
            writer.add_key_value(key, f.contents(), main)


def converter_renumbers(fields):
    """Whether `airllama convert gguf` renumbers this vocabulary: a port of the test in
    `convert::VocabOrder::for_dllama` (io/src/convert/tokenizer.rs). The special tokens
    (control, user-defined, and bos) go to the last ids, bos first; nothing moves when they
    are there already, or when the GGUF has no token types."""
    tt = fields.get("tokenizer.ggml.token_type")
    if tt is None:
        return False
    types = np.asarray(tt.contents())
    n = types.size
    bos_f = fields.get("tokenizer.ggml.bos_token_id")
    bos = int(bos_f.contents()) if bos_f is not None else None
    special = np.isin(types, SPECIAL_TYPES)
    if bos is not None and 0 <= bos < n:
        special[bos] = False
    others = np.flatnonzero(special).tolist()
    specials = ([bos] if bos is not None and 0 <= bos < n else []) + others
    k = len(specials)
    if k == 0 or k == n:
        return False
    return specials != list(range(n - k, n))


def read_tokenizer(path):
    """A `.t` file's tokens (raw bytes, by id) and airllama's id map: `source[id]` is the
    token's GGUF id, or None when the file records no renumbering (`TokenizerFile::parse` and
    `source_ids` in io/src/tokenizer_file.rs)."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def take(n, what):
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ModelError(f"{path}: truncated while reading {what}")
        pos += n
        return data[pos - n:pos]

    def i32(what):
        return struct.unpack("<i", take(4, what))[0]

    magic = i32("magic") & 0xFFFFFFFF
    stop_lens, template_len, n_eos = [], 0, 0
    if magic == OLD_TOKENIZER_MAGIC:
        vocab_size = i32("header")
        take(16, "header")
    elif magic == TOKENIZER_MAGIC:
        size = i32("header size")
        if size < 8 or (size - 8) % 8 or size > 8 + 8 * 1024:
            raise ModelError(f"{path}: bad tokenizer header size {size}")
        keys = {}
        for _ in range((size - 8) // 8):
            key, value = struct.unpack("<ii", take(8, "header"))
            if key == T_CHAT_STOP:
                stop_lens.append(value)
            else:
                keys[key] = value
        vocab_size = keys.get(T_VOCAB_SIZE, 0)
        template_len = max(keys.get(T_CHAT_TEMPLATE, 0), 0)
        n_eos = keys.get(T_N_EOS, 0)
    else:
        raise ModelError(f"{path}: not a dllama tokenizer file (magic {magic:#x})")
    if vocab_size <= 0:
        raise ModelError(f"{path}: vocabulary size {vocab_size}")
    regions = [take(n, "chat stop region") for n in stop_lens]
    take(template_len, "chat template")
    take(4 * n_eos, "eos ids")
    tokens = []
    for _ in range(vocab_size):
        _score, length = struct.unpack("<fI", take(8, "token"))
        tokens.append(take(length, "token bytes"))
    if pos != len(data):
        raise ModelError(f"{path}: {len(data) - pos} bytes after the vocabulary")
    maps = [r for r in regions if r.startswith(ID_MAP_MAGIC)]
    return tokens, (id_map(path, maps[0], vocab_size) if maps else None)


def id_map(path, region, n):
    """The AIRLLIDS region (u32 version, u32 count, (u32 id in the file, u32 GGUF id) x count)
    as the GGUF id of every file id, checked to be a permutation."""
    if len(region) < 16:
        raise ModelError(f"{path}: truncated id map")
    version, count = struct.unpack_from("<II", region, 8)
    if version != ID_MAP_VERSION:
        raise ModelError(f"{path}: id map version {version} (this script reads {ID_MAP_VERSION})")
    if count > n or len(region) != 16 + 8 * count:
        raise ModelError(f"{path}: id map count {count} differs from its length")
    pairs = np.frombuffer(region, dtype="<u4", offset=16).reshape(count, 2).astype(np.int64)
    if count and (pairs.max() >= n or np.unique(pairs[:, 0]).size != count):
        raise ModelError(f"{path}: id map entry out of range or repeated")
    source = np.arange(n, dtype=np.int64)
    source[pairs[:, 0]] = pairs[:, 1]
    if np.unique(source).size != n:
        raise ModelError(f"{path}: id map is not a permutation")
    return source


def gguf_token_bytes(fields):
    """The raw bytes of every GGUF token, as `airllama convert gguf` stores them in the `.t`:
    GPT-2 byte-level strings through the inverse byte-to-unicode table, SentencePiece strings
    with U+2581 as a space and <0xXX> as that byte (io/src/convert/tokenizer.rs)."""
    model_f = fields.get("tokenizer.ggml.model")
    model = model_f.contents() if model_f is not None else None
    strings = fields["tokenizer.ggml.tokens"].contents()
    if model == "gpt2":
        printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
        table = {chr(b): bytes([b]) for b in printable}
        rest = [b for b in range(256) if chr(b) not in table]
        table.update({chr(0x100 + i): bytes([b]) for i, b in enumerate(rest)})
        return [b"".join(table.get(c) or c.encode() for c in s) for s in strings]
    if model == "llama":
        out = []
        for s in strings:
            raw = s.encode()
            if (len(raw) == 6 and raw.startswith(b"<0x") and raw.endswith(b">")
                    and all(c in b"0123456789abcdefABCDEF" for c in raw[3:5])):
                out.append(bytes([int(raw[3:5], 16)]))
                continue
            out.append(s.replace("\u2581", " ").encode())
        return out
    raise ModelError(f"tokenizer model {model!r}: `airllama convert gguf` writes no .t for it")


def row_order(m_path, src_path, fields, t_path, rows_in_gguf_order):
    """Where each GGUF token's embedding and classifier row is in the `.m`: `file_of[gguf_id]`,
    or None when the rows are in the GGUF's order; and a sentence saying how that was decided."""
    if rows_in_gguf_order:
        return None, "rows taken in the GGUF's token order (--rows-in-gguf-order)"
    beside = os.path.splitext(m_path)[0] + ".t"
    found = t_path is None and os.path.isfile(beside)
    if found:
        t_path = beside
    if t_path is None:
        if converter_renumbers(fields):
            raise ModelError(
                f"{src_path}'s token order breaks dllama's rule (special tokens last), so "
                f"`airllama convert gguf` renumbers its tokens and moves the embedding and "
                f"classifier rows with them; the .t written with {m_path} records how. Give "
                f"it with --tokenizer T.t (there is no {beside}), or --rows-in-gguf-order if "
                f"the .m's rows are in the GGUF's order (a gen-model model, or a .m converted "
                f"before the renumbering)")
        return None, None
    tokens, source = read_tokenizer(t_path)
    want = gguf_token_bytes(fields)
    n = len(want)
    if len(tokens) != n:
        raise ModelError(f"{t_path}: {len(tokens)} tokens, {src_path} has {n}")
    ids = source if source is not None else np.arange(n)
    for f in range(n):
        if tokens[f] != want[ids[f]]:
            raise ModelError(
                f"{t_path}{' (found beside the .m)' if found else ''} does not hold "
                f"{src_path}'s vocabulary: its token {f} is {tokens[f]!r}, GGUF token "
                f"{ids[f]} is {want[ids[f]]!r}" + (
                    "; give the .t written with the .m (--tokenizer T.t), or "
                    "--rows-in-gguf-order" if found else ""))
    moved = 0 if source is None else int(np.count_nonzero(source != np.arange(n)))
    if moved == 0:
        return None, f"{t_path}: tokens at their GGUF ids, rows in the GGUF's order"
    file_of = np.empty(n, dtype=np.int64)
    file_of[source] = np.arange(n)
    return file_of, (f"{moved} of {n} token ids renumbered by the converter ({t_path}): their "
                     f"embedding and classifier rows put back at the GGUF's ids")


def embedding_match(reader, emb, chunk=4096):
    """Rows of `emb` (the embedding in the GGUF's token order) equal to the --vocab-from GGUF's
    own embedding, dequantized (the converter writes exactly those values), or None when that
    GGUF has no embedding of this shape."""
    from gguf.quants import dequantize
    src = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    rows, cols = emb.shape
    if src is None or [int(x) for x in src.shape] != [cols, rows]:
        return None
    data = np.asarray(src.data).reshape(rows, -1)
    same = 0
    for s in range(0, rows, chunk):
        ref = dequantize(data[s:s + chunk], src.tensor_type).reshape(-1, cols)
        got = np.asarray(emb[s:s + chunk], dtype=np.float32)
        tol = 1e-6 * np.abs(ref).max(axis=1)
        same += int(np.count_nonzero(np.abs(got - ref).max(axis=1) <= tol))
    return same


def write_gguf(m_path, out_path, vocab_from=None, name=None, tokenizer=None,
               rows_in_gguf_order=False):
    """Writes the GGUF; returns the header, the layout, the `.m` bytes, the row order
    (`file_of[gguf_id]`, None when rows stay in place) and sentences for the summary."""
    import gguf
    if tokenizer and rows_in_gguf_order:
        raise ModelError("--tokenizer and --rows-in-gguf-order exclude each other")
    c, tensors, data = open_model(m_path)
    notes = []
    order = None
    if vocab_from:
        reader = gguf.GGUFReader(vocab_from)
        fields = source_vocab(reader, vocab_from, c["vocab_size"])
        order, note = row_order(m_path, vocab_from, fields, tokenizer, rows_in_gguf_order)
        if note:
            notes.append(note)
    elif tokenizer or rows_in_gguf_order:
        raise ModelError("--tokenizer and --rows-in-gguf-order go with --vocab-from (the "
                         "synthetic vocabulary has no token order to restore)")
    arrays = {}
    for t in tensors:
        arr = tensor_array(data, t)
        if order is not None and t[1] in TOKEN_ROWS:
            arr = arr[order]
        arrays[t[0]] = arr
    if vocab_from:
        same = embedding_match(reader, arrays["token_embd.weight"])
        n = c["vocab_size"]
        if same is not None and 0 < same < n:
            why = ("is the .t the one written with it?" if order is not None else
                   "was it renumbered by the converter? give the .t written with it, "
                   "--tokenizer T.t")
            raise ModelError(
                f"{n - same} of {n} embedding rows differ from {vocab_from}'s own embedding and "
                f"{same} are equal: the rows of {m_path} are not in its token order ({why})")
        if same == n:
            notes.append(f"embedding equal to {vocab_from}'s (dequantized) at all {n} token ids")
    w = gguf.GGUFWriter(out_path, "llama")
    w.add_name(name or m_path.rsplit("/", 1)[-1].removesuffix(".m"))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if c["weight_type"] == Q40
                    else gguf.LlamaFileType.ALL_F32)
    w.add_context_length(c["seq_len"])
    w.add_embedding_length(c["dim"])
    w.add_feed_forward_length(c["hidden_dim"])
    w.add_block_count(c["n_layers"])
    w.add_head_count(c["n_heads"])
    w.add_head_count_kv(c["n_kv_heads"])
    w.add_rope_freq_base(float(c["rope_theta"]))
    w.add_rope_dimension_count(c["head_dim"])
    w.add_layer_norm_rms_eps(1e-5 if c["norm_epsilon"] == 5 else 1e-6)
    w.add_vocab_size(c["vocab_size"])
    if c["explicit_head_dim"]:
        w.add_key_length(c["head_dim"])
        w.add_value_length(c["head_dim"])
    if vocab_from:
        copy_vocab(w, fields)
    else:
        tokens, scores, types = synthetic_vocab(c["vocab_size"])
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(len(tokens) - 2)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
    for t in tensors:
        arr = arrays[t[0]]
        if t[4] == Q40:
            w.add_tensor(t[0], arr, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            w.add_tensor(t[0], arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return c, tensors, data, order, notes


def verify_gguf(out_path, tensors, data, order=None):
    """Every GGUF tensor is byte-identical to its .m region, with the expected ggml shape; the
    embedding and classifier row by row through `order` (`file_of[gguf_id]`) when given."""
    import gguf
    r = gguf.GGUFReader(out_path)
    by_name = {t.name: t for t in r.tensors}
    if len(by_name) != len(tensors):
        raise ModelError(f"{out_path}: {len(by_name)} tensors, expected {len(tensors)}")
    total = 0
    for name, role, rows, cols, ft, off, size in tensors:
        g = by_name.get(name)
        if g is None:
            raise ModelError(f"{out_path}: lacks {name}")
        want_type = gguf.GGMLQuantizationType.Q4_0 if ft == Q40 else gguf.GGMLQuantizationType.F32
        shape = [int(x) for x in g.shape]
        want_shape = [cols] if rows == 1 else [cols, rows]
        if g.tensor_type != want_type or shape != want_shape:
            raise ModelError(f"{name}: {g.tensor_type.name} {shape}, expected "
                             f"{want_type.name} {want_shape}")
        got = np.asarray(g.data).view(np.uint8).reshape(-1)
        want = data[off:off + size]
        if order is not None and role in TOKEN_ROWS and got.size == size:
            got, want = got.reshape(rows, -1), want.reshape(rows, -1)[order]
        if got.size != size or not np.array_equal(got, want):
            raise ModelError(f"{name}: bytes differ from the .m region at {off}"
                             + (" (rows in the GGUF's token order)" if order is not None
                                and role in TOKEN_ROWS else ""))
        total += size
    return total


def dllama_requant(blocks):
    """dllama's writer.py Q40 rounding of the dequantized blocks (n, 18) -> (n, 18)."""
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (n, 1)
    qs = blocks[:, 2:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # (n, 32)
    x = ((codes - np.float32(8)) * d).astype(np.float32)
    mx, mn = x.max(axis=1), x.min(axis=1)
    extreme = np.where(-mn > mx, mn, mx).astype(np.float32)
    delta = (extreme / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(delta != 0, np.float32(1) / delta, np.float32(0)).astype(np.float32)
    q = x * inv[:, None] + np.float32(8.5)
    q = np.clip(q, 0, 15).astype(np.uint8)
    out = np.empty_like(blocks)
    out[:, :2] = delta.astype(np.float16)[:, None].view(np.uint8)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out


def compare(a_path, b_path):
    ca, ta, da = open_model(a_path)
    cb, tb, db = open_model(b_path)
    for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
              "weight_type", "head_dim", "rope_theta", "norm_epsilon", "seq_len"):
        if ca[k] != cb[k]:
            print(f"header differs: {k} {ca[k]} vs {cb[k]}")
            return 1
    same = requant = blocks_total = 0
    bad = []
    for x, y in zip(ta, tb):
        a = da[x[5]:x[5] + x[6]]
        b = db[y[5]:y[5] + y[6]]
        if np.array_equal(a, b):
            same += 1
            if x[4] == Q40:
                blocks_total += x[6] // Q40_BYTES
            continue
        if x[4] != Q40:
            bad.append(x[0])
            continue
        chunk = 1 << 20
        n_diff = 0
        for s in range(0, x[6] // Q40_BYTES, chunk):
            e = min(s + chunk, x[6] // Q40_BYTES)
            ab = np.asarray(a[s * Q40_BYTES:e * Q40_BYTES]).reshape(-1, Q40_BYTES)
            bb = np.asarray(b[s * Q40_BYTES:e * Q40_BYTES]).reshape(-1, Q40_BYTES)
            diff = np.any(ab != bb, axis=1)
            if diff.any():
                n_diff += int(diff.sum())
                if not np.array_equal(dllama_requant(ab[diff]), bb[diff]):
                    bad.append(x[0])
                    break
        blocks_total += x[6] // Q40_BYTES
        requant += n_diff
    hdr = "identical" if ca["header_size"] == cb["header_size"] and np.array_equal(
        da[:ca["header_size"]], db[:cb["header_size"]]) else "different (key set or order)"
    print(f"headers: {hdr}; tensors: {same}/{len(ta)} byte-identical")
    if bad:
        print("MISMATCH (not explained by dllama's re-quantization): " + ", ".join(bad[:10]))
        return 1
    if requant:
        print(f"Q40 blocks re-quantized by the converter: {requant} of {blocks_total} "
              f"({100.0 * requant / blocks_total:.2f} %), each equal to dllama's rounding "
              f"of the original block's values")
    elif blocks_total:
        print(f"Q40 blocks: all {blocks_total} identical")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help=".m model (or the first .m with --compare)")
    p.add_argument("output", help="GGUF to write (or the second .m with --compare)")
    p.add_argument("--vocab-from", help="copy the tokenizer.* keys of this GGUF")
    p.add_argument("--tokenizer", metavar="T.t",
                   help="with --vocab-from: the .t written with the .m; its id map (tokens the "
                        "converter renumbered) puts the embedding and classifier rows back in "
                        "the GGUF's token order (default: the .t beside the .m, if any)")
    p.add_argument("--rows-in-gguf-order", action="store_true",
                   help="with --vocab-from: the .m's rows are in the GGUF's token order "
                        "already (gen-model, or a .m converted before the renumbering)")
    p.add_argument("--name", help="general.name (default: the model file's stem)")
    p.add_argument("--no-verify", action="store_true", help="skip the read-back check")
    p.add_argument("--compare", action="store_true",
                   help="compare the tensors of two .m files instead of writing a GGUF")
    a = p.parse_args()
    try:
        if a.compare:
            return compare(a.model, a.output)
        c, tensors, data, order, notes = write_gguf(
            a.model, a.output, a.vocab_from, a.name, a.tokenizer, a.rows_in_gguf_order)
        for note in notes:
            print(note)
        msg = (f"wrote {a.output}: llama, dim {c['dim']}, hidden {c['hidden_dim']}, "
               f"{c['n_layers']} layers, {c['n_heads']}/{c['n_kv_heads']} heads, "
               f"vocab {c['vocab_size']}, {len(tensors)} tensors")
        if not a.no_verify:
            n = verify_gguf(a.output, tensors, data, order)
            msg += f"; read back: all {n} tensor bytes identical to the .m"
            if order is not None:
                msg += " (embedding and classifier rows through the id map)"
        print(msg)
    except ModelError as e:
        print(f"gen-gguf: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
