#!/usr/bin/env bash
# Side by side: llama.cpp's llama-bench, C++ dllama (optional) and airllama on the same weights
# (a .m and the GGUF that scripts/gen-gguf.py writes from it), interleaved round by round, and a
# table of prefill and decode tokens/s (median, min-max) with ratios against llama.cpp.
# See "Versus llama.cpp" in docs/PERFORMANCE.md.
#
# usage: scripts/bench-vs.sh --llama-bench PATH --model X.m --gguf X.gguf --tokenizer X.t
#          [--dllama PATH] [--airllama PATH] [--threads "1 2"] [--rounds 3]
#          [--prompt TEXT] [--prompt-tokens 32] [--gen-tokens 128] [--out DIR] [--nice N]
#
# Every round runs, for each thread count, every engine once, the engines' order rotating from
# round to round (so none is always first after a pause):
#   llama.cpp: llama-bench -m X.gguf -p P -n N -t T -r 1 -o jsonl (pp P and tg N; its own warm-up)
#   dllama:    dllama inference --model X.m --tokenizer X.t --buffer-float-type q80
#                --steps P+N --prompt TEXT --nthreads T
#   airllama:  airllama inference (the same flags)
# For the inference commands the prompt must encode to P+1 tokens (bos included): P are
# evaluated in one batch (prefill), then N are predicted (decode); the script checks the
# evaluated count and warns when it differs. tokens/s are the engines' own: llama-bench's
# avg_ts, and the "Evaluation" / "Prediction" tokens/s that dllama and airllama print.
#
# Nothing is built here: llama-bench and dllama come ready (built outside the repository),
# airllama defaults to $CARGO_TARGET_DIR/release/airllama (else target/release/airllama).
# The raw numbers (results.tsv), each run's log and the load average before each round are kept
# in --out (default: a new folder under /tmp). --nice N runs every engine under nice -n N
# (default 0; on a shared machine run the whole script under `nice -n 19` instead). Spinning
# thread pools (all three engines spin between ops) collapse when another process takes one of
# their CPUs, so record the load average (the script logs it before each round) and compare
# only rounds of one run.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
llama_bench="" dllama="" airllama="" model="" gguf="" tokenizer=""
threads="1 2" rounds=3 prompt="" prompt_tokens=32 gen_tokens=128 out="" niceness=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --llama-bench) llama_bench="$2"; shift 2 ;;
    --dllama) dllama="$2"; shift 2 ;;
    --airllama) airllama="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --gguf) gguf="$2"; shift 2 ;;
    --tokenizer) tokenizer="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --prompt) prompt="$2"; shift 2 ;;
    --prompt-tokens) prompt_tokens="$2"; shift 2 ;;
    --gen-tokens) gen_tokens="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --nice) niceness="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "bench-vs: unknown argument $1" >&2; usage ;;
  esac
done

die() { echo "bench-vs: $*" >&2; exit 1; }
[ -n "$llama_bench" ] || die "--llama-bench PATH is required (llama.cpp is never built here)"
[ -x "$llama_bench" ] || die "$llama_bench is not executable"
[ -z "$dllama" ] || [ -x "$dllama" ] || die "$dllama is not executable"
if [ -z "$airllama" ]; then
  airllama="${CARGO_TARGET_DIR:-$repo/target}/release/airllama"
fi
[ -x "$airllama" ] || die "$airllama is not executable (build it: cargo build --release)"
[ -f "$model" ] || die "--model X.m is required"
[ -f "$gguf" ] || die "--gguf X.gguf is required (scripts/gen-gguf.py X.m X.gguf)"
[ -f "$tokenizer" ] || die "--tokenizer X.t is required (airllama convert gguf X.gguf rt.m X.t)"
if [ -z "$prompt" ]; then
  # With the synthetic vocabulary of scripts/gen-gguf.py every letter is one token and bos is
  # added: P letters are P+1 tokens. Pass --prompt for a real tokenizer.
  prompt="$(printf 'abcdefghijklmnopqrstuvwxyz%.0s' $(seq 1 $((prompt_tokens / 26 + 1))) \
    | cut -c "1-$prompt_tokens")"
fi
steps=$((prompt_tokens + gen_tokens))
[ -n "$out" ] || out="$(mktemp -d /tmp/bench-vs.XXXXXX)"
mkdir -p "$out"
results="$out/results.tsv"
printf 'round\tthreads\tengine\tprefill_tps\tdecode_tps\tprefill_tokens\n' > "$results"
run() { nice -n "$niceness" "$@"; }

engines="llama.cpp"
[ -z "$dllama" ] || engines="$engines dllama"
engines="$engines airllama"

# tokens/s after the "Evaluation" / "Prediction" heading of dllama's (and airllama's) summary.
summary_tps() { # file heading
  awk -v h="$2" '$1 == h {f = 1; next} f && $1 == "tokens/s:" {print $2; exit}' "$1"
}
summary_tokens() { # file heading
  awk -v h="$2" '$1 == h {f = 1; next} f && $1 == "nTokens:" {print $2; exit}' "$1"
}

run_llama_cpp() { # round threads log
  run "$llama_bench" -m "$gguf" -p "$prompt_tokens" -n "$gen_tokens" -t "$2" -r 1 -o jsonl \
    > "$3" 2> "$3.err" || { echo "bench-vs: llama-bench failed, see $3.err" >&2; return 1; }
  python3 - "$3" "$1" "$2" "$prompt_tokens" >> "$results" <<'EOF'
import json, sys
path, rnd, t, p = sys.argv[1:5]
pp = tg = None
for line in open(path):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0:
        pp = r["avg_ts"]
    elif r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
        tg = r["avg_ts"]
if pp is None or tg is None:
    sys.exit(f"bench-vs: no pp/tg result in {path}")
print(f"{rnd}\t{t}\tllama.cpp\t{pp:.3f}\t{tg:.3f}\t{p}")
EOF
}

run_inference() { # engine binary round threads log
  run "$2" inference --model "$model" --tokenizer "$tokenizer" --buffer-float-type q80 \
    --steps "$steps" --prompt "$prompt" --nthreads "$4" > "$5" 2>&1 \
    || { echo "bench-vs: $1 failed, see $5" >&2; return 1; }
  local pp tg n
  pp="$(summary_tps "$5" Evaluation)"
  tg="$(summary_tps "$5" Prediction)"
  n="$(summary_tokens "$5" Evaluation)"
  if [ -z "$pp" ] || [ -z "$tg" ]; then
    echo "bench-vs: no summary in $5" >&2
    return 1
  fi
  if [ "$n" != "$prompt_tokens" ]; then
    echo "bench-vs: warning: $1 evaluated $n prompt tokens, not $prompt_tokens (adjust --prompt)" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$3" "$4" "$1" "$pp" "$tg" "$n" >> "$results"
}

{
  echo "# bench-vs $(date -u +%FT%TZ) on $(hostname)"
  echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cpus"
  echo "# model $model, gguf $gguf, tokenizer $tokenizer"
  echo "# llama-bench $llama_bench, dllama ${dllama:-none}, airllama $airllama"
  echo "# threads '$threads', rounds $rounds, prefill $prompt_tokens, decode $gen_tokens"
} > "$out/info.txt"
cat "$out/info.txt" >&2

for round in $(seq 1 "$rounds"); do
  echo "round $round: load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/load.txt" >&2
  # Rotate the engines' order each round.
  rotated="$(echo "$engines" | awk -v s="$((round - 1))" \
    '{for (i = 0; i < NF; i++) printf "%s ", $(((i + s) % NF) + 1)}')"
  for t in $threads; do
    for e in $rotated; do
      log="$out/r${round}-t${t}-${e}.log"
      case "$e" in
        llama.cpp) run_llama_cpp "$round" "$t" "$log" ;;
        dllama) run_inference dllama "$dllama" "$round" "$t" "$log" ;;
        airllama) run_inference airllama "$airllama" "$round" "$t" "$log" ;;
      esac
      tail -n 1 "$results" | awk -F'\t' '{printf "  t=%s %-9s prefill %8.2f tok/s  decode %7.2f tok/s\n", $2, $3, $4, $5}' >&2
    done
  done
done
echo "after: load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/load.txt" >&2

python3 - "$results" "$engines" "$threads" <<'EOF'
import statistics, sys
path, engines, threads = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
rows = [l.rstrip("\n").split("\t") for l in open(path)][1:]
data = {}
for rnd, t, e, pp, tg, n in rows:
    data.setdefault((t, e), []).append((float(pp), float(tg)))
def cell(v):
    return f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
print(f"| threads | engine | rounds | prefill tok/s median (min-max) | decode tok/s median (min-max) | prefill vs llama.cpp | decode vs llama.cpp |")
print("|---|---|---|---|---|---|---|")
for t in threads:
    base = data.get((t, "llama.cpp"))
    for e in engines:
        v = data.get((t, e))
        if not v:
            continue
        pp = [x[0] for x in v]
        tg = [x[1] for x in v]
        if base:
            rp = statistics.median(pp) / statistics.median([x[0] for x in base])
            rt = statistics.median(tg) / statistics.median([x[1] for x in base])
            ratios = f"{rp:.2f}x | {rt:.2f}x"
        else:
            ratios = "- | -"
        print(f"| {t} | {e} | {len(v)} | {cell(pp)} | {cell(tg)} | {ratios} |")
EOF
echo "raw numbers and logs: $out" >&2
