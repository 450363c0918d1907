#!/usr/bin/env bash
# Soak test of one `airllama worker` (kept in the repository, not run in CI): for a given time,
# plays sessions against a single worker process, interleaving
#   * real sessions: golden replays (`airllama replay <scenario> --port <the worker's port>`,
#     byte-exact against the recorded C++ worker), rotating over several recordings, and
#   * hostile sessions: random bytes (up to 17 MiB), golden streams cut at random offsets
#     (truncated handshakes, configs, weights, forwards), huge declared sizes in every message,
#     bit flips, connections reset mid-message, a handshake naming a dead peer, and stalls
#     (a prefix, then silence until the worker drops the session after --net-timeout),
# sampling the worker's VmRSS, open descriptors and threads every N sessions into a CSV.
#
# It fails (exit 1) if a golden replay ever mismatches, the worker dies, a stall is not dropped
# within --net-timeout + 5 s, or, after the warm-up, RSS grows more than --max-rss-growth over
# its warm-up level or the descriptor count grows at all (beyond a slack of 2).
#
# Usage: scripts/soak.sh [--duration 10m] [--out DIR] [--every 50] [--net-timeout 1]
#                        [--max-rss-growth-mb 32] [--seed N] [--bin PATH] [-- worker flags...]
# e.g.   scripts/soak.sh --duration 3h --out /tmp/soak -- --mem-budget 1M --spill-dir /tmp/s
#        (a budget must hold the largest layer of every recording: 1M does, 256K does not)
# Environment: SCENARIOS (space-separated "variant/scenario[:worker]", default: the recordings an
# x86 AVX2 worker matches). Needs python3. Results: DIR/samples.csv, DIR/summary.txt,
# DIR/worker.log, DIR/failures/ (the replay report of any mismatch).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10m
out=""
every=50
net_timeout=1
max_rss_growth_mb=32
seed="$(date +%s)"
bin=""
worker_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --every) every=$2; shift 2 ;;
    --net-timeout) net_timeout=$2; shift 2 ;;
    --max-rss-growth-mb) max_rss_growth_mb=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --) shift; worker_flags=("$@"); break ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

seconds() {
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
duration_s="$(seconds "$duration")"

if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/airllama"
fi
bin="$(realpath "$bin")"
golden="$(realpath ../shared/golden)"
out="${out:-$(mktemp -d /tmp/airllama-soak.XXXXXX)}"
mkdir -p "$out"
out="$(realpath "$out")"
scenarios="${SCENARIOS:-llama-q40/2nodes llama-q40/3nodes:0 llama-q40/3nodes:1 qwen3-q40/2nodes qwen3moe-q40/2nodes llama-f32/2nodes-batch1 llama-q40/2nodes-long}"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin" worker --host 127.0.0.1 --port "$port" --nthreads 1 --net-timeout "$net_timeout" \
  "${worker_flags[@]}" >"$out/worker.log" 2>&1 &
worker_pid=$!
trap 'kill "$worker_pid" 2>/dev/null || true; wait "$worker_pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do
  ss -ltn "sport = :$port" 2>/dev/null | grep -q LISTEN && break
  grep -q "^listening on" "$out/worker.log" 2>/dev/null && break
  sleep 0.05
done
echo "soak: worker pid $worker_pid on 127.0.0.1:$port (${worker_flags[*]:-no extra flags}), --net-timeout $net_timeout"
echo "soak: $duration_s s, sample every $every sessions, seed $seed, results in $out"

python3 - "$bin" "$golden" "$port" "$worker_pid" "$duration_s" "$every" "$net_timeout" \
  "$max_rss_growth_mb" "$seed" "$out" $scenarios <<'PY'
import json, os, random, socket, struct, subprocess, sys, time

(bin_, golden, port, pid, duration, every, net_timeout, max_growth_mb, seed, out) = sys.argv[1:11]
scenarios = sys.argv[11:]
port, pid, duration, every = int(port), int(pid), int(duration), int(every)
net_timeout, max_growth_kb = int(net_timeout), int(max_growth_mb) * 1024
rng = random.Random(int(seed))
ACK = struct.pack("<I", 23571114)

def u32(*v):
    return struct.pack("<%dI" % len(v), *v)

# The golden llama-q40/2nodes root stream and its layout, the material of hostile sessions.
g2 = os.path.join(golden, "llama-q40/2nodes")
stream = open(os.path.join(g2, "w0_c0_root.to_worker.bin"), "rb").read()
lay = json.load(open(os.path.join(g2, "manifest.json")))["layout"]["worker0"]
NET = lay["net_config"]["offset"]
NODE = lay["node_config"]["offset"]
WEIGHTS = lay["weights"]["offset"]
INFER = lay["inference_offset"]
rec = lay["weights"]["records"][0]
HELLO = stream[:NET]                       # handshake + root-ready ACK
CONFIGS = stream[:WEIGHTS]                  # ... + net config + node config
THROUGH_WEIGHTS = stream[:INFER]            # ... + every weight record + terminator

def status_field(name):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return -1

def sample():
    fds = len(os.listdir("/proc/%d/fd" % pid))
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return status_field("VmRSS"), fds, status_field("Threads"), cpu

def alive():
    try:
        os.kill(pid, 0)
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def drain(s, limit):
    """Reads until the worker closes; returns (bytes, seconds) or raises on timeout."""
    s.settimeout(limit)
    got, t0 = 0, time.time()
    try:
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            got += len(b)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return got, time.time() - t0

def send_close(payload, reset=False):
    """Sends payload, half-closes (or resets), and waits for the worker to hang up."""
    s = connect()
    try:
        s.settimeout(30)
        try:
            s.sendall(payload)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the worker refused early: fine
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        drain(s, net_timeout + 30)
    finally:
        s.close()

def cut(lo, hi):
    return stream[: rng.randrange(lo, hi)]

# Hostile sessions: (name, weight, function).
def random_bytes():
    n = rng.choice([rng.randrange(1, 4096), rng.randrange(1, 1 << 16), rng.randrange(1, 17 << 20)])
    send_close(rng.randbytes(n))

def truncated_handshake():
    send_close(stream[: rng.randrange(0, NET)])

def truncated_configs():
    send_close(cut(NET, WEIGHTS))

def truncated_weights():
    send_close(cut(WEIGHTS, INFER))

def truncated_forward():
    send_close(cut(INFER, len(stream)))

def reset_mid_message():
    send_close(cut(0, len(stream)), reset=True)

def bit_flips():
    b = bytearray(THROUGH_WEIGHTS if rng.random() < 0.5 else CONFIGS)
    for _ in range(rng.randrange(1, 5)):
        i = rng.randrange(0, len(b))
        b[i] ^= 1 << rng.randrange(8)
    send_close(bytes(b))

def huge_sizes():
    big = rng.choice([0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0xFFFFFFF0, 1 << 24])
    net_len = lay["net_config"]["length"]
    choices = [
        u32(big, 0),                                        # n_workers
        u32(2, 0, big) + b"x" * 64,                          # peer host length
        HELLO + u32(23571114, 32, 2, big),                   # nPipes
        HELLO + u32(23571114, big, 2, 5),                    # nBatches
        HELLO + u32(23571114, 32, big, 5),                   # nNodes
        HELLO + stream[NET:NET + 16] + stream[NET + 16:NET + 56] + u32(big),  # pipe name length
        CONFIGS[: NODE] + u32(23571114, 1, big),             # nBuffers
        CONFIGS + u32(big),                                  # weight name length
        CONFIGS + u32(len(rec["name"]) + 1) + rec["name"].encode() + b"\0"
            + u32(0) + struct.pack("<QQ", 0, rng.choice([1 << 62, 1 << 40, 0xFFFFFFFFFFFFFFFF])),
        THROUGH_WEIGHTS + u32(rng.randrange(0, 1 << 32), big),  # control packet batch
        THROUGH_WEIGHTS + u32(big, 1),                       # control packet position
    ]
    send_close(rng.choice(choices))

def dead_peer():
    # Worker 0 of 2, told to connect to a port nobody listens on.
    s = socket.socket(); s.bind(("127.0.0.1", 0)); dead = s.getsockname()[1]; s.close()
    host = b"127.0.0.1\0"
    send_close(u32(2, 0, len(host)) + host + u32(dead) + ACK)

# Where a root may rest without owing anything: before a control packet (a worker waits for
# the next forward as long as it likes). A stall anywhere else must be dropped.
IDLE_POINTS = {f["offset"] for f in lay["forwards"]} | {lay["stop_packet"]["offset"]}
stalls = []
def stall():
    at = rng.randrange(0, len(stream))
    while at in IDLE_POINTS:
        at = rng.randrange(0, len(stream))
    payload = stream[:at]
    s = connect()
    try:
        s.sendall(payload)
        # Keep the connection open and silent; the worker must drop it.
        got, waited = drain(s, net_timeout + 5)
        stalls.append(waited)
    except socket.timeout:
        raise SystemExit("FAIL: a stall at offset %d was not dropped within %d s"
                         % (len(payload), net_timeout + 5))
    finally:
        s.close()

HOSTILE = [
    ("random_bytes", 3, random_bytes), ("truncated_handshake", 2, truncated_handshake),
    ("truncated_configs", 2, truncated_configs), ("truncated_weights", 2, truncated_weights),
    ("truncated_forward", 2, truncated_forward), ("reset_mid_message", 2, reset_mid_message),
    ("bit_flips", 2, bit_flips), ("huge_sizes", 4, huge_sizes), ("dead_peer", 1, dead_peer),
    ("stall", 1, stall),
]
weights = [w for _, w, _ in HOSTILE]

def replay(spec):
    scenario, _, index = spec.partition(":")
    cmd = [bin_, "replay", os.path.join(golden, scenario), "--worker-index", index or "0",
           # The worker is already listening on --port: replay's own "worker" is a placeholder.
           "--worker-cmd", "sleep 100000", "--port", str(port), "--timeout", "120"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode == 0, r.stdout + r.stderr

csv = open(os.path.join(out, "samples.csv"), "w")
csv.write("elapsed_s,sessions,replays,hostile,rss_kb,fds,threads,worker_cpu_s\n")
counts = {name: 0 for name, _, _ in HOSTILE}
sessions = replays = hostile = 0
rows = []
start = time.time()
failure = None
warmup_sessions = max(every * 4, 200)
baseline_rss = baseline_fds = None

def record():
    rss, fds, threads, cpu = sample()
    row = (round(time.time() - start, 1), sessions, replays, hostile, rss, fds, threads, round(cpu, 2))
    rows.append(row)
    csv.write(",".join(map(str, row)) + "\n")
    csv.flush()
    return rss, fds

record()
next_spec = 0
while time.time() - start < duration:
    if rng.random() < 0.4:
        spec = scenarios[next_spec % len(scenarios)]
        next_spec += 1
        ok, report = replay(spec)
        replays += 1
        if not ok:
            os.makedirs(os.path.join(out, "failures"), exist_ok=True)
            with open(os.path.join(out, "failures", "replay-%d.txt" % sessions), "w") as f:
                f.write(spec + "\n" + report)
            failure = "golden replay %s mismatched after %d sessions (see failures/)" % (spec, sessions)
    else:
        name, _, fn = rng.choices(HOSTILE, weights)[0]
        try:
            fn()
        except SystemExit as e:
            failure = str(e)
        except OSError as e:
            # Connection-level errors on our side are fine; the worker must survive them.
            pass
        counts[name] += 1
        hostile += 1
    sessions += 1
    if not alive():
        failure = failure or "the worker died after %d sessions" % sessions
    if failure:
        break
    if sessions % every == 0:
        rss, fds = record()
        if sessions >= warmup_sessions:
            if baseline_rss is None:
                baseline_rss, baseline_fds = rss, fds
            elif rss > baseline_rss + max_growth_kb:
                failure = "RSS grew from %d kB (after warm-up) to %d kB" % (baseline_rss, rss)
            elif fds > baseline_fds + 2:
                failure = "open descriptors grew from %d to %d" % (baseline_fds, fds)
        if failure:
            break
if alive():
    record()
csv.close()

rss = [r[4] for r in rows]
fds = [r[5] for r in rows]
summary = [
    "seed %s, %.0f s, %d sessions: %d golden replays (all byte-exact: %s), %d hostile"
    % (seed, time.time() - start, sessions, replays, "no" if failure and "replay" in failure else "yes", hostile),
    "hostile by kind: " + ", ".join("%s %d" % kv for kv in counts.items()),
    "stalls dropped after %.2f..%.2f s (--net-timeout %d)" % (min(stalls), max(stalls), net_timeout)
    if stalls else "no stalls",
    "VmRSS kB: first %d, after warm-up %s, last %d, max %d" % (rss[0], baseline_rss, rss[-1], max(rss)),
    "open fds: first %d, after warm-up %s, last %d, max %d" % (fds[0], baseline_fds, fds[-1], max(fds)),
    "worker CPU: %.1f s; samples: %d rows in samples.csv" % (rows[-1][7], len(rows)),
    "RESULT: " + ("FAIL: " + failure if failure else "PASS"),
]
text = "\n".join(summary)
print(text)
open(os.path.join(out, "summary.txt"), "w").write(text + "\n")
sys.exit(1 if failure else 0)
PY
