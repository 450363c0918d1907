#!/usr/bin/env bash
# Worker time per forward: airllama's worker against a C++ dllama worker (see the "Worker"
# section of docs/PERFORMANCE.md).
#
# usage: scripts/bench-worker.sh [path/to/dllama]
#
# Without a dllama binary only the airllama worker is timed on the golden llama-q40/2nodes
# session. With one (this script never builds dllama) it also:
#   * makes a Llama-3.2-1B-shaped random Q40 model (dim 2048, 16 layers, 32 heads, 8 KV heads,
#     hidden 8192, vocab 128256; about 1.7 GB, written once into $WORK) with `airllama gen-model`
#     and records a 2-node session of the C++ root and a C++ worker on it with
#     ../shared/tools/golden_replay.py (prompt of 66 SmolLM2 tokens: forwards of batch 32, 32,
#     then 32 of batch 1);
#   * times both workers on both sessions with benches/benches/worker_vs_dllama.rs (the root's
#     recorded bytes are fed eagerly; every byte the worker sends is checked);
#   * with LIVE=1, also runs the real C++ root against each worker (2 nodes, interleaved) and
#     prints the root's mean Eval (batch 32) and Pred (batch 1) times, Sync included.
#
# Environment: ROUNDS (bench rounds, default 5), LIVE_ROUNDS (default 3), NTHREADS (threads of
# the workers, default 1), WORK (scratch folder, default <repo>/.cache/bench-worker), BIG=0 to
# skip the 1B-shaped model, TASKSET (e.g. "taskset -c 1", prefixed to every worker command).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dllama="${1:-}"
rounds="${ROUNDS:-5}"
live_rounds="${LIVE_ROUNDS:-3}"
nthreads="${NTHREADS:-1}"
work="${WORK:-$repo/.cache/bench-worker}"
big="${BIG:-1}"
pin="${TASKSET:-}"
golden="$repo/../shared/golden"
target="${CARGO_TARGET_DIR:-$repo/target}"
airllama="$target/release/airllama"

if [ -n "$dllama" ] && [ ! -x "$dllama" ]; then
  echo "bench-worker: $dllama is not an executable dllama binary" >&2
  exit 1
fi
cd "$repo"
cargo build --release --bin airllama >&2

workers="airllama=$pin $airllama worker --port {port} --nthreads $nthreads"
scenarios="$golden/llama-q40/2nodes"
mkdir -p "$work"

# The prompt: 66 tokens with SmolLM2's tokenizer (65 evaluated: 32 + 32 + 1).
prompt="Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who spent his days repairing the watches of travellers. Every evening he walked to the river to watch the sun set behind the distant mountains, and he told stories to the children who gathered around his wooden bench at night."
model="$work/llama1b-shape-q40.m"
tokenizer="$work/smollm2.t"
session="$work/llama1b-shape-2nodes"

if [ -n "$dllama" ]; then
  workers="$workers;dllama=$pin $dllama worker --port {port} --nthreads $nthreads"
  if [ "$big" != 0 ]; then
    if [ ! -s "$model" ]; then
      "$airllama" gen-model --output "$model" --dim 2048 --layers 16 --heads 32 --kv-heads 8 \
        --hidden-dim 8192 --vocab 128256 --seq-len 256 --weights q40 --seed 3 >&2
    fi
    if [ ! -s "$tokenizer" ]; then
      gguf="$(bash "$repo/scripts/fetch-smollm2.sh" | tail -n 1)"
      "$airllama" convert gguf "$gguf" "$work/smollm2.m" "$tokenizer" --weights q40 >&2
      rm -f "$work/smollm2.m"
    fi
    if [ ! -s "$session/manifest.json" ]; then
      rm -rf "$session"
      python3 "$golden/../tools/golden_replay.py" record --dllama "$dllama" --model "$model" \
        --tokenizer "$tokenizer" --out "$session" --workers 1 --prompt "$prompt" --steps 96 \
        --seed 7 --buffer-float-type q80 --max-seq-len 256 --root-nthreads 1 \
        --worker-nthreads 1 --base-port 39600 --build-note "$dllama" >&2
    fi
    scenarios="$scenarios;$session"
  fi
fi

echo "bench-worker: $(date -u +%FT%TZ) $(uptime)"
AIRLLAMA_BENCH_WORKERS="$workers" AIRLLAMA_BENCH_SCENARIOS="$scenarios" \
  AIRLLAMA_BENCH_ROUNDS="$rounds" cargo bench -p airllama-benches --bench worker_vs_dllama
echo "bench-worker: $(date -u +%FT%TZ) $(uptime)"

if [ "${LIVE:-0}" = 1 ] && [ -n "$dllama" ] && [ "$big" != 0 ]; then
  # The real C++ root against each worker; the root's own lines give Eval/Pred + Sync per forward.
  live() { # name, worker binary, port
    local name=$1 bin=$2 port=$3 out="$work/live-$1.txt"
    $pin "$bin" worker --port "$port" --nthreads "$nthreads" > "$work/live-$name-worker.log" 2>&1 &
    local pid=$!
    sleep 2
    "$dllama" inference --model "$model" --tokenizer "$tokenizer" --buffer-float-type q80 \
      --prompt "$prompt" --steps 96 --max-seq-len 256 --nthreads 1 --temperature 0 --seed 7 \
      --workers "127.0.0.1:$port" > "$out" 2>&1 || true
    kill "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
    python3 - "$name" "$out" <<'PY'
import re, sys
name, path = sys.argv[1:]
eval32, pred = [], []
for line in open(path, encoding="utf-8", errors="replace"):
    m = re.search(r"(Eval|Pred)\s*(\d+) ms Sync\s*(\d+) ms.*?(\((\d+) tokens\))?$", line.rstrip("\n"))
    if not m:
        continue
    t = int(m.group(2)) + int(m.group(3))
    if m.group(1) == "Eval" and m.group(5) == "32":
        eval32.append(t)
    elif m.group(1) == "Pred":
        pred.append(t)
mean = lambda v: sum(v) / len(v) if v else float("nan")
print(f"live root {name:<9} batch 32: {mean(eval32):8.1f} ms ({len(eval32)})   batch 1: {mean(pred):8.1f} ms ({len(pred)})")
PY
  }
  for ((r = 0; r < live_rounds; r++)); do
    live airllama "$airllama" 39700
    live dllama "$dllama" 39702
  done
fi
