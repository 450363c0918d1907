#!/usr/bin/env bash
# Zero-data movement (--shared-storage) against the classic weight transfer, on a 3-node cluster
# on this machine (scripts/cluster.sh: one network namespace per node, 1 Gbit/s links, 0.2 ms
# one-way delay). See the "Zero-data movement (shared storage)" section of docs/PERFORMANCE.md.
#
# usage (as root): scripts/bench-shared-storage.sh BINARY MODEL TOKENIZER [REPEATS]
#
#   BINARY     an airllama binary; it is copied into $OUT first, so a rebuild cannot swap it
#   MODEL      a .m model that splits over 1 and 3 nodes (every node reads this same file)
#   TOKENIZER  its .t tokenizer
#   REPEATS    interleaved rounds of the TTFT phase (default 3)
#
# Phases (PHASES, default "disk ttft stream check"), each run with the page cache dropped first:
#   disk    `airllama bench --disk` (one O_DIRECT reader, then a 1-node --mem-budget decode) and
#           3 O_DIRECT readers at once (dd), what 3 nodes sharing this one disk can read
#   ttft    per round, rotated: b0 = zero-data with an empty --cache-dir (the root builds the
#           identity table; round 1's table is kept for b), a = classic (workers without --model,
#           root without --shared-storage), b = zero-data with the table cached (workers with
#           --model), c = 1 node (root alone, all local). Time to first token (TTFT: process
#           start to the first "Pred" line, which prints the first generated token), bytes each
#           worker received before the first forward and over the session, peak RSS per node,
#           the tokens.
#   stream  workers --mem-budget BUDGET --model MODEL --cache-dir (fresh), root --mem-budget
#           BUDGET --shared-storage: session 1 builds the workers' slice caches, session 2
#           reuses them; tokens/s, bytes read, peak RSS.
#   check   classic vs zero-data on CHECK_MODEL (default: smol.m next to the tokenizer, if any),
#           CHECK_STEPS tokens of CHECK_PROMPT: the same tokens?
#
# Environment: OUT (results folder, default /work/bench/shared-storage-<time>), PHASES, STEPS
# (TTFT runs, default 8), STREAM_STEPS (default 9: the first token + 8 decode steps), BUDGET
# (default 512M), CHECK_MODEL, CHECK_STEPS (default 48), CHECK_PROMPT, RATE (default 1gbit),
# DELAY (default 0.2ms), QUIET_WAIT (before each root, wait up to this many seconds, default
# 60, until processes outside the cluster use < 5% of a CPU; each run records the CPU they used
# during it as other_cpu_s). All nodes run with --net-turbo 0 and --nthreads 1: with 3 nodes and a
# user-space switch on 2 cores, spinning on sockets starves the others.
# Results: $OUT/runs/*.json (one per root process), $OUT/*.log, $OUT/summary.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
self="$repo/scripts/$(basename "${BASH_SOURCE[0]}")"
cluster_sh="$repo/scripts/cluster.sh"

if [ "${1:-}" != "--inner" ]; then
  if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    sed -n "2,36p" "$self" | sed 's/^# \{0,1\}//' >&2
    exit 2
  fi
  [ "$(id -u)" -eq 0 ] || { echo "bench-shared-storage: run as root (namespaces, drop_caches)" >&2; exit 1; }
  [ -x "$1" ] || { echo "bench-shared-storage: $1 is not executable" >&2; exit 1; }
  [ -f "$2" ] || { echo "bench-shared-storage: no model $2" >&2; exit 1; }
  [ -f "$3" ] || { echo "bench-shared-storage: no tokenizer $3" >&2; exit 1; }
  out="${OUT:-/work/bench/shared-storage-$(date -u +%Y%m%dT%H%M%SZ)}"
  mkdir -p "$out/runs"
  cp "$1" "$out/airllama"
  export BSS_OUT="$out" BSS_BIN="$out/airllama" BSS_MODEL="$(realpath "$2")" BSS_TOK="$(realpath "$3")"
  export BSS_REPEATS="${4:-3}"
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "binary: $1 (sha256 $(sha256sum "$1" | cut -d' ' -f1))"
    echo "repo HEAD when the bench started (not necessarily the binary's build): $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cpus; kernel $(uname -r)"
    echo "model: $BSS_MODEL ($(stat -c %s "$BSS_MODEL") bytes)"
  } | tee "$out/meta.txt"
  exec "$cluster_sh" run --nodes 3 --rate "${RATE:-1gbit}" --delay "${DELAY:-0.2ms}" --name "bss$$" -- "$self" --inner
fi

# ---- inside the cluster (CLUSTER_NAME, CLUSTER_SH, NODE1_ADDR, NODE2_ADDR from cluster.sh run)
out="$BSS_OUT" bin="$BSS_BIN" model="$BSS_MODEL" tok="$BSS_TOK" repeats="$BSS_REPEATS"
phases="${PHASES:-disk ttft stream check}"
steps="${STEPS:-8}" stream_steps="${STREAM_STEPS:-9}" budget="${BUDGET:-512M}"
check_model="${CHECK_MODEL:-$(dirname "$tok")/smol.m}"
check_steps="${CHECK_STEPS:-48}" check_prompt="${CHECK_PROMPT:-Paris is famous for}"
port=9998
workers=("$NODE1_ADDR:$port" "$NODE2_ADDR:$port")
table_dir="$out/idtable"     # the identity tables of the "table cached" runs
common=(--tokenizer "$tok" --buffer-float-type q80 --temperature 0 --seed 7 --nthreads 1 --net-turbo 0)
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$out/progress.log" >&2; }

# The root runner: starts the root in node 0, timestamps its output, snapshots the byte counters
# when it prints "Weights loaded" (the workers' own /proc/PID/net/dev at once, then
# `cluster.sh stats --json`), and at the end; peak RSS of the root (wait4) and workers (VmHWM).
cat >"$out/runroot.py" <<'EOF'
import json, os, re, subprocess, sys, threading, time
args = sys.argv[1:]
opts = {}
while args and args[0] != "--":
    opts[args[0]] = args[1]; args = args[2:]
cmd = args[1:]
csh, name, prefix = opts["--cluster-sh"], opts["--name"], opts["--out"]
wpids = [int(x) for x in opts.get("--worker-pids", "").split()]

def netdev(pid):
    try:
        for line in open("/proc/%d/net/dev" % pid):
            k, _, v = line.partition(":")
            if k.strip() == "eth0":
                f = v.split()
                return {"rx_bytes": int(f[0]), "tx_bytes": int(f[8])}
    except OSError:
        return None

def stats():
    r = subprocess.run([csh, "stats", name, "--json"], capture_output=True, text=True)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"error": r.stderr}

def hwm(pid):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None

# Other work on the machine (other engineers' builds and tests share these 2 CPUs and this disk):
# every second, the processes that are not this benchmark's and used CPU in that second.
# This benchmark's own processes: those in the cluster's namespaces (root, workers, switch), this
# runner, and the small tools of `cluster.sh stats`; other airllama processes count as others.
ns_mine = {os.stat("/run/netns/" + n).st_ino for n in os.listdir("/run/netns") if n.startswith("airl-%s-" % name)}
tools = {"bash", "ip", "setsid", "cluster.sh", "sleep", "grep", "cat", "sed", "tc", "awk", "tr", "wc", "date"}
def is_mine(q, comm):
    if int(q) == os.getpid() or comm in tools or comm.startswith(("kworker", "ksoftirq", "kdamond", "rcu", "jbd2", "kswapd")):
        return True
    try:
        return os.stat("/proc/%s/ns/net" % q).st_ino in ns_mine
    except OSError:
        return True
others, stop = {}, []
def watch():
    prev = {}
    while not stop:
        for q in os.listdir("/proc"):
            if not q.isdigit():
                continue
            try:
                st = open("/proc/%s/stat" % q).read()
            except OSError:
                continue
            comm = st[st.index("(") + 1:st.rindex(")")]
            f = st[st.rindex(")") + 2:].split()
            cpu = int(f[11]) + int(f[12])
            if q in prev and cpu - prev[q] > 0 and not is_mine(q, comm):
                others[comm] = others.get(comm, 0) + cpu - prev[q]
            prev[q] = cpu
        time.sleep(1)
wt = threading.Thread(target=watch, daemon=True); wt.start()
subprocess.run([csh, "stats", name, "--reset"], check=True, capture_output=True)
base = {p: netdev(p) for p in wpids}
res = {"cmd": cmd, "loadavg_before": open("/proc/loadavg").read().split()[:3]}
t0 = time.monotonic()
p = subprocess.Popen([csh, "exec", name, "0", "--"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
lines, toks, holder = [], [], {}
with open(prefix + ".log", "w") as logf:
    for raw in p.stdout:
        t = time.monotonic() - t0
        line = raw.decode("utf-8", "replace").rstrip("\n")
        logf.write("%9.3f %s\n" % (t, line)); logf.flush()
        lines.append((t, line))
        if "Weights loaded" in line and "t_weights_line" not in res:
            res["t_weights_line"] = t
            res["weights_proc"] = {str(q): (lambda n, b: None if n is None or b is None else
                                            {k: n[k] - b[k] for k in n})(netdev(q), base[q]) for q in wpids}
            def snap():
                s0 = time.monotonic(); holder["stats"] = stats(); holder["stats_s"] = time.monotonic() - s0
            th = threading.Thread(target=snap); th.start(); holder["th"] = th
        if line.startswith("🔶 Pred"):  # the first one prints the first generated token
            if "ttft" not in res:
                res["ttft"] = t
            toks.append((t, line.split("|", 2)[2] if line.count("|") >= 2 else ""))
_, status, ru = os.wait4(p.pid, 0)
p.returncode = 0
res["wall"] = time.monotonic() - t0
stop.append(1)
hz = os.sysconf("SC_CLK_TCK")
res["other_cpu_s"] = {k: round(v / hz, 2) for k, v in sorted(others.items(), key=lambda kv: -kv[1])}
res["exit"] = os.waitstatus_to_exitcode(status)
res["root_maxrss_kb"] = ru.ru_maxrss
res["worker_hwm_kb"] = {str(q): hwm(q) for q in wpids}
if "th" in holder:
    holder["th"].join()
    res["weights_stats"] = holder["stats"]; res["weights_stats_s"] = holder["stats_s"]
res["end_stats"] = stats()
res["end_proc"] = {str(q): (lambda n, b: None if n is None or b is None else
                           {k: n[k] - b[k] for k in n})(netdev(q), base[q]) for q in wpids}
text = "\n".join(l for _, l in lines)
m = re.search(r"Weights loaded in (\d+) ms", text); res["weights_ms"] = int(m.group(1)) if m else None
m = re.search(r"Prediction\s+nTokens: (\d+)\s+tokens/s: ([0-9.]+)", text)
res["pred_tokens"], res["pred_tok_s"] = (int(m.group(1)), float(m.group(2))) if m else (None, None)
res["tokens"] = [s for _, s in toks]
res["token_times"] = [t for t, _ in toks]
if len(toks) >= 2:  # decode tokens/s: the Pred lines after the first one
    res["decode_tok_s"] = (len(toks) - 1) / (toks[-1][0] - toks[0][0])
res["lines_tail"] = [l for _, l in lines[-12:]]
json.dump(res, open(prefix + ".json", "w"), indent=1, ensure_ascii=False)
print("exit %s ttft %s weights_ms %s wall %.1f other CPU %.1f s %s" % (res["exit"], res.get("ttft"), res["weights_ms"], res["wall"],
      sum(res["other_cpu_s"].values()), list(res["other_cpu_s"])[:3]))
sys.exit(0 if res["exit"] == 0 else 1)
EOF

# Wait (up to QUIET_WAIT seconds) until other work on the machine is quiet: less than 0.1 s of
# CPU in 2 s by processes outside the cluster's namespaces. Prints the wait.
cat >"$out/quiet.py" <<'EOF'
import os, sys, time
ns_mine = {os.stat("/run/netns/" + n).st_ino for n in os.listdir("/run/netns") if n.startswith("airl-%s-" % sys.argv[2])}
tools = {"bash", "ip", "setsid", "cluster.sh", "sleep", "grep", "cat", "sed", "tc", "awk", "tr", "wc", "date", "process_api"}
def is_mine(q, comm):
    if int(q) == os.getpid() or comm in tools or comm.startswith(("kworker", "ksoftirq", "kdamond", "rcu", "jbd2", "kswapd")):
        return True
    try:
        return os.stat("/proc/%s/ns/net" % q).st_ino in ns_mine
    except OSError:
        return True
def sample():
    d = {}
    for q in os.listdir("/proc"):
        if q.isdigit():
            try:
                st = open("/proc/%s/stat" % q).read()
            except OSError:
                continue
            comm = st[st.index("(") + 1:st.rindex(")")]
            if is_mine(q, comm):
                continue
            f = st[st.rindex(")") + 2:].split()
            d[q] = (comm, int(f[11]) + int(f[12]))
    return d
hz, limit, t0 = os.sysconf("SC_CLK_TCK"), float(sys.argv[1]), time.monotonic()
while True:
    a = sample(); time.sleep(2); b = sample()
    busy = sum(v[1] - a[q][1] for q, v in b.items() if q in a) / hz
    if busy < 0.1 or time.monotonic() - t0 > limit:
        print("waited %.0f s for quiet (other CPU %.2f s in the last 2 s)" % (time.monotonic() - t0, busy)); break
EOF

W_PIDS=()
# start_workers TAG [worker options...]: one worker in node 1 and one in node 2, until they listen.
start_workers() {
  local tag="$1" i pid lg k
  shift
  W_PIDS=()
  for i in 1 2; do
    lg="$out/$tag.w$i.log"
    read -r pid _ < <("$CLUSTER_SH" bg "$CLUSTER_NAME" "$i" --log "$lg" -- "$bin" worker --port "$port" --nthreads 1 \
      --net-turbo 0 "${@//@I@/$i}")
    W_PIDS+=("$pid")
  done
  for i in 1 2; do
    for ((k = 0; k < 100; k++)); do
      grep -qs "^listening on" "$out/$tag.w$i.log" && break
      sleep 0.1
    done
    grep -qs "^listening on" "$out/$tag.w$i.log" || { cat "$out/$tag.w$i.log" >&2; log "worker $i did not start"; exit 1; }
  done
}
stop_workers() {
  local pid k
  for pid in "${W_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${W_PIDS[@]}"; do
    for ((k = 0; k < 100; k++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  W_PIDS=()
}
trap 'stop_workers' EXIT

# run_root TAG [inference options...]: page cache dropped, then the root in node 0.
run_root() {
  local tag="$1"
  shift
  log "$tag: $(python3 "$out/quiet.py" "${QUIET_WAIT:-60}" "$CLUSTER_NAME")"
  "$CLUSTER_SH" drop-caches 2>/dev/null
  log "$tag: $(python3 "$out/runroot.py" --cluster-sh "$CLUSTER_SH" --name "$CLUSTER_NAME" --out "$out/runs/$tag" \
    --worker-pids "${W_PIDS[*]}" -- "$bin" inference "$@" || echo FAILED)"
}

phase_disk() {
  log "disk: airllama bench --disk (one O_DIRECT reader, then a 1-node --mem-budget $budget decode)"
  "$CLUSTER_SH" drop-caches 2>/dev/null
  "$bin" bench --model "$model" --mem-budget "$budget" --disk --nthreads 1 >"$out/disk.bench.log" 2>&1 || log "bench failed"
  cat "$out/disk.bench.log" >&2
  # three O_DIRECT readers at once, 1 GiB each at three offsets: three nodes sharing this disk
  local size n i
  size="$(stat -c %s "$model")"
  for n in 1 3; do
    "$CLUSTER_SH" drop-caches 2>/dev/null
    for ((i = 0; i < n; i++)); do
      dd if="$model" of=/dev/null bs=4M count=256 skip=$((size / 3 / 4194304 * i)) iflag=direct \
        2>"$out/disk.dd$n.$i.log" &
    done
    wait
    log "disk: $n dd reader(s) at once: $(grep -h copied "$out"/disk.dd$n.*.log | sed 's/.*copied, //' | tr '\n' ';')"
  done
}

ttft_one() {
  local mode="$1" tag="$2" cache
  case "$mode" in
    a)
      start_workers "$tag"
      run_root "$tag" --model "$model" "${common[@]}" --prompt Hello --steps "$steps" --workers "${workers[@]}"
      stop_workers ;;
    b | b0)
      if [ "$mode" = b ]; then cache="$table_dir"; elif [ ! -d "$table_dir" ]; then cache="$table_dir"; else
        cache="$out/idtable-$tag"; rm -rf "$cache"
      fi
      start_workers "$tag" --model "$model" --cache-dir "$out/wcache@I@"
      run_root "$tag" --model "$model" "${common[@]}" --prompt Hello --steps "$steps" --workers "${workers[@]}" \
        --shared-storage --cache-dir "$cache"
      stop_workers ;;
    c)
      run_root "$tag" --model "$model" "${common[@]}" --prompt Hello --steps "$steps" ;;
  esac
}

phase_ttft() {
  local r order=(b0 a b c) k m
  for ((r = 1; r <= repeats; r++)); do
    for ((k = 0; k < 4; k++)); do
      m="${order[$(((k + r - 1) % 4))]}"
      ttft_one "$m" "ttft-$m-r$r"
    done
  done
}

phase_stream() {
  local d="$out/stream" i
  rm -rf "$d"
  mkdir -p "$d/spill0"
  log "stream: workers --mem-budget $budget --model, root --mem-budget $budget --shared-storage"
  start_workers stream --mem-budget "$budget" --model "$model" --cache-dir "$d/cache@I@" --verbose
  for i in 1 2; do
    run_root "stream-s$i" --model "$model" "${common[@]}" --prompt Hello --steps "$stream_steps" --workers "${workers[@]}" \
      --shared-storage --cache-dir "$table_dir" --mem-budget "$budget" --spill-dir "$d/spill0" --verbose
    du -ab "$d" >"$out/stream-s$i.du.txt" 2>&1 || true
  done
  for i in 1 2; do grep -h VmHWM "/proc/${W_PIDS[$((i - 1))]}/status" >"$out/stream.w$i.hwm" 2>/dev/null || true; done
  stop_workers
}

phase_check() {
  [ -f "$check_model" ] || { log "check: no $check_model, skipped"; return 0; }
  local cc=(--model "$check_model" "${common[@]}" --prompt "$check_prompt" --steps "$check_steps" --workers "${workers[@]}")
  start_workers check-a
  run_root check-a "${cc[@]}"
  stop_workers
  start_workers check-b --model "$check_model" --cache-dir "$out/wcache@I@"
  run_root check-b "${cc[@]}" --shared-storage --cache-dir "$table_dir"
  stop_workers
  run_root check-c "${cc[@]:0:${#cc[@]}-3}"
}

log "cluster $CLUSTER_NAME up; phases: $phases; repeats $repeats; out $out"
for ph in $phases; do "phase_$ph"; done

# ---- summary
python3 - "$out" <<'EOF' | tee "$out/summary.md"
import glob, json, os, statistics, sys
out = sys.argv[1]
runs = {}
for f in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
    runs[os.path.basename(f)[:-5]] = json.load(open(f))
def rng(xs, fmt="%.1f"):
    xs = [x for x in xs if x is not None]
    if not xs: return "–"
    return (fmt + " (" + fmt + "–" + fmt + ", n=%d)") % (statistics.median(xs), min(xs), max(xs), len(xs))
MiB = 1 << 20
def node(st, i, k):
    try: return st["nodes"][i][k]
    except (KeyError, IndexError, TypeError): return None
names = {"b0": "b0 zero-data, first run (identity table built)", "a": "a classic (root sends the slices)",
         "b": "b zero-data, identity table cached", "c": "c 1 node, local load"}
print("| mode | TTFT s | weights loaded s | other CPU s during the run | rx node 1 / node 2 before 1st forward (stats --json) | rx before 1st forward (/proc, at the line) | rx over the session | peak RSS root / w1 / w2 MiB |")
print("|---|---|---|---|---|---|---|---|")
for m in ("a", "b0", "b", "c"):
    rs = [r for k, r in runs.items() if k.startswith("ttft-%s-" % m)]
    if not rs: continue
    ttft = rng([r.get("ttft") for r in rs]); wl = rng([r["weights_ms"] / 1000 if r.get("weights_ms") else None for r in rs])
    def cell(key, scale=MiB, fmt="%.2f"):
        vals = []
        for i in (1, 2):
            v = [node(r.get(key), i, "rx_bytes") for r in rs]
            v = [x / scale for x in v if x is not None]
            vals.append((fmt + "–" + fmt) % (min(v), max(v)) if v else "–")
        return " / ".join(vals) + " MiB"
    def pcell():
        vals = []
        for r in rs:
            for q, d in (r.get("weights_proc") or {}).items():
                if d: vals.append(d["rx_bytes"] / MiB)
        return ("%.3f–%.3f MiB" % (min(vals), max(vals))) if vals else "–"
    def hw(j):  # worker j's VmHWM (workers in node order: their pids were given in that order)
        return [list(r["worker_hwm_kb"].values())[j] // 1024 for r in rs
                if len(r["worker_hwm_kb"]) > j and list(r["worker_hwm_kb"].values())[j]]
    rss = " / ".join("%d" % max(x) if x else "–" for x in
                     ([r["root_maxrss_kb"] // 1024 for r in rs], hw(0), hw(1)))
    oc = rng([sum(r["other_cpu_s"].values()) if "other_cpu_s" in r else None for r in rs])
    print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (names[m], ttft, wl, oc, cell("weights_stats") if m != "c" else "–",
          pcell() if m != "c" else "–", cell("end_stats") if m != "c" else "–", rss))
print()
for k, r in runs.items():
    print("- %s: exit %s, ttft %s s, weights %s ms, wall %.1f s, decode %s tok/s, load before %s, other CPU %.1f s, stats snapshot took %s s, tokens %s" % (
        k, r["exit"], None if r.get("ttft") is None else round(r["ttft"], 3), r.get("weights_ms"), r["wall"],
        None if r.get("decode_tok_s") is None else round(r["decode_tok_s"], 3), " ".join(r["loadavg_before"]),
        sum(r.get("other_cpu_s", {}).values()),
        None if r.get("weights_stats_s") is None else round(r["weights_stats_s"], 2), "|".join(r["tokens"])))
# the streamed sessions: bytes each node read per forward and how fast, from the --verbose lines
import re
pat = re.compile(r"streamed (\d+) units, (\d+) MB read in (\d+) ms")
wlogs = []
for i in (1, 2):
    try:
        wlogs.append(open(os.path.join(out, "stream.w%d.log" % i)).read().split("root connected")[1:])
    except OSError:
        wlogs.append([])
for n in (1, 2):
    r = runs.get("stream-s%d" % n)
    if not r: continue
    root = [tuple(map(int, m.groups())) for m in pat.finditer(open(os.path.join(out, "runs", "stream-s%d.log" % n)).read())]
    per = [root] + [[tuple(map(int, m.groups())) for m in pat.finditer(w[n - 1])] if len(w) >= n else [] for w in wlogs]
    t = r["token_times"]
    dec = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else None
    mb = [statistics.median([x[1] for x in p]) if p else 0 for p in per]
    rd = [sum(x[1] for x in p) / sum(x[2] for x in p) if p else 0 for p in per]  # MB/ms = GB/s
    print("- stream session %d: weights loaded %s ms, TTFT %.2f s, %d tokens, decode %.3f tok/s (Pred lines 2..%d); MB read per forward root/w1/w2 %s, "
          "read rate while reading %s GB/s; all nodes %.0f MB per token -> %.2f GB/s at the decode rate; peak RSS root %d MiB; other CPU %.1f s" % (
          n, r["weights_ms"], r["ttft"], len(t), dec or 0, len(t), "/".join("%.0f" % x for x in mb), "/".join("%.2f" % x for x in rd),
          sum(mb), sum(mb) * (dec or 0) / 1000, r["root_maxrss_kb"] // 1024, sum(r.get("other_cpu_s", {}).values())))
toks = {k: tuple(r["tokens"]) for k, r in runs.items()}
groups = {}
for k, t in toks.items():
    groups.setdefault(k.split("-")[0] + ("" if not k.startswith("check") else ""), {}).setdefault(t, []).append(k)
print()
for g, d in groups.items():
    print("- tokens, %s runs: %d distinct sequence(s): %s" % (g, len(d), "; ".join(",".join(v) for v in d.values())))
EOF
