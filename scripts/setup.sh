#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine with rustup: the aarch64 cross
# linker and qemu user mode (NEON tests), and the rustup targets for the no_std and aarch64 builds.
set -euo pipefail
need_apt=()
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
rustup target add x86_64-unknown-none aarch64-unknown-linux-gnu
rustup component add rustfmt clippy 2>/dev/null || true
