#!/usr/bin/env python3
"""Writes the seed corpus of the `worker_session` fuzz target: root->worker streams cut from the
recorded C++ sessions in ../shared/golden (using each manifest's parsed layout). Whole sessions
are 0.4-3 MB, almost all weight data, so the seeds keep the handshake, the root-ready ACK, the
net and node configs, a few weight records (or none: a worker takes a stream that sends no
weights and computes on zeros), the weight terminator, the last two batch-1 forwards with their
data and the stop packet; plus the first 64 KiB of one real stream, verbatim. Run from the
repository root: python3 fuzz/seeds/worker_session.py"""
import json, os

here = os.path.dirname(os.path.abspath(__file__))
golden = os.path.join(here, "..", "..", "..", "shared", "golden")
out_dir = os.path.join(here, "..", "corpus", "worker_session")

# (seed name, scenario, worker, indices of the weight records kept, blocking)
SOURCES = [
    # block_matmul_q and block_norm_0 of layer 0.
    ("llama-q40-2nodes", "llama-q40/2nodes", 0, [0, 7], False),
    # Layer 0's MoE gate, the second expert's w1 (a record at a non-zero offset), block_norm_q.
    ("qwen3moe-q40-2nodes", "qwen3moe-q40/2nodes", 0, [4, 8, 17], False),
    # The harness runs a stream whose length is a multiple of 4 without --net-turbo: this one is
    # padded after the stop packet (the worker never reads past it).
    ("qwen3-q40-2nodes", "qwen3-q40/2nodes", 0, [], True),
    # Worker 1 of 2 accepts worker 0; worker 0 of 2 connects to worker 1 (F32 syncs).
    ("qwen3moe-q40-3nodes-w1", "qwen3moe-q40/3nodes", 1, [], False),
    ("llama-f32-3nodes-w0", "llama-f32/3nodes", 0, [], False),
]

def cut(scenario, worker, kept):
    folder = os.path.join(golden, scenario)
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    stream = open(os.path.join(folder, f"w{worker}_c0_root.to_worker.bin"), "rb").read()
    layout = manifest["layout"][f"worker{worker}"]
    weights = layout["weights"]
    out = stream[: weights["offset"]]
    records = weights["records"]
    for i in kept:
        r = records[i]
        end = records[i + 1]["record_offset"] if i + 1 < len(records) else weights["end_marker_offset"]
        out += stream[r["record_offset"] : end]
    out += stream[weights["end_marker_offset"] : layout["inference_offset"]]
    batch1 = [f for f in layout["forwards"] if f["batch"] == 1][-2:]
    for f in batch1:
        out += stream[f["offset"] : f["offset"] + f["in_bytes"]]
    stop = layout["stop_packet"]["offset"]
    out += stream[stop : stop + 8]
    assert stop + 8 == len(stream), scenario
    return out

os.makedirs(out_dir, exist_ok=True)
for name, scenario, worker, kept, blocking in SOURCES:
    data = cut(scenario, worker, kept)
    if blocking:
        data += bytes(-len(data) % 4)
    else:
        assert len(data) % 4 != 0, name
    open(os.path.join(out_dir, name), "wb").write(data)
    print(f"{name}: {len(data)} bytes")
prefix = open(os.path.join(golden, "llama-q40/2nodes/w0_c0_root.to_worker.bin"), "rb").read()[: 64 << 10]
open(os.path.join(out_dir, "llama-q40-2nodes-prefix-64k"), "wb").write(prefix)
print(f"llama-q40-2nodes-prefix-64k: {len(prefix)} bytes")
