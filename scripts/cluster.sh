#!/usr/bin/env bash
# scripts/cluster.sh: an N-node cluster on one machine, one network namespace per node, every
# node on its own rate-limited, delayed link to a switch (a bridge in a namespace of its own).
# Run as root. `scripts/cluster.sh help` prints the usage; README.md has an example.
#
# Layout for a cluster NAME with N nodes (nothing is created in the root namespace):
#   namespace airl-NAME-sw      bridge br0 with ports p0..p(N-1)
#   namespace airl-NAME-I       eth0 = 10.77.0.(I+1)/24 (veth peer of pI) and lo, both up
# Interface names are per namespace, so clusters of different names coexist (and may all use
# 10.77.0.0/24). Every link is shaped in both directions: a tbf at --rate on eth0 (what the
# node sends) and on pI (what the switch delivers to the node), so each node has its own
# full-duplex link and traffic of several senders to one node shares that node's downlink.
# --delay D adds D to every frame a node sends, so the round trip between two nodes is about
# 2*D more than without it. It is a netem qdisc on eth0 when the kernel has one; without netem
# the bridge is replaced by a small user-space switch (python3, AF_PACKET, real-time priority)
# that holds each frame D after the kernel received it (at 1gbit/0.2ms: ~0.47 ms UDP round trip
# from python vs ~0.09 ms without delay, ~95% of the rate as TCP goodput).
# State (settings, background pids) lives under /run/airllama-cluster/NAME.
set -euo pipefail

PROG=cluster.sh
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
STATE_ROOT="${CLUSTER_STATE_ROOT:-/run/airllama-cluster}"
NS_PREFIX=airl
SUBNET=10.77.0
IFACE=eth0

usage() {
  cat <<'EOF'
usage: scripts/cluster.sh COMMAND ...   (as root)

  up --nodes N [--rate R] [--delay D] [--name NAME] [--burst BYTES] [--delay-mode M] [--replace]
        Start N nodes (1..250). Node I (0 = the first, usually the dllama root) is 10.77.0.(I+1)
        in namespace airl-NAME-I. R is a tc rate (1gbit, 100mbit, 125mbps = bytes/s; default
        1gbit; 0 = unshaped), D a one-way delay (0.2ms, 200us; default 0 = none).
        M: auto (default: netem if the kernel has it, else the user-space switch), netem, switch.
        BYTES: the tbf bucket (default 1 ms at R, at least 32 KiB; a smaller one paces small
        messages more strictly but makes tbf cut TCP's 64 KiB segments into frames, costing CPU).
        Refuses if NAME (default c0) is up, unless --replace (then takes it down first).
  exec NAME I [--] CMD...        Run CMD in node I's namespace (foreground; exit code is CMD's).
  bg NAME I [--log FILE] [--] CMD...
        Start CMD in node I's namespace in the background, in a session of its own; prints its
        pid and log file (default /tmp/cluster-NAME-nodeI-K.log). `down` kills it.
  stats NAME [--json] [--reset]  Bytes/packets each node received and sent (its eth0 veth
        counters, Ethernet frames) and frames its two shapers dropped; --reset makes later stats
        count from now.
  env NAME                       Print the CLUSTER_*/NODE_ADDRS exports (eval "$(... env NAME)").
  list                           Clusters that are up.
  down NAME                      Kill every process in the cluster's namespaces, delete them (and
        with them the veths and the bridge) and the state. Safe to repeat.
  run [up options] [--drop-caches] [--] CMD...
        Bring a cluster up (NAME defaults to r<pid>), run CMD in the default namespace with
        CLUSTER_NAME, CLUSTER_NODES, NODE_ADDRS ("10.77.0.1 10.77.0.2 ..."), NODE<I>_ADDR and
        CLUSTER_SH (this script) exported, print the stats and take it down, also on failure or
        Ctrl-C. Exit code is CMD's. CMD places processes with "$CLUSTER_SH exec/bg".
  drop-caches                    sync; echo 3 > /proc/sys/vm/drop_caches (cold page cache).
  selftest [--rate R] [--delay D] [--delay-mode M] [--burst BYTES] [--seconds S]
        3 nodes (default 100mbit, 1ms): UDP round trips between all pairs, TCP throughput one to
        one and two to one, the counters, a second cluster beside the first; then down.

example:
  scripts/cluster.sh up --nodes 3 --rate 1gbit --delay 0.2ms --name t1
  scripts/cluster.sh bg t1 1 --log /tmp/w1.log -- target/release/airllama worker --port 9998 --nthreads 1
  scripts/cluster.sh exec t1 0 -- python3 -c 'print("hi")'
  scripts/cluster.sh stats t1 --json
  scripts/cluster.sh down t1
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, veths and tc need CAP_NET_ADMIN); try: sudo $0 $*"
}
need_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || die "'$t' not found in PATH (ip and tc come with iproute2: apt-get install iproute2)"
  done
}
check_name() {
  [[ "$1" =~ ^[A-Za-z0-9_]{1,16}$ ]] || die "bad cluster name '$1': use 1-16 of [A-Za-z0-9_]"
}
ns_sw() { printf '%s-%s-sw' "$NS_PREFIX" "$1"; }
ns_node() { printf '%s-%s-%s' "$NS_PREFIX" "$1" "$2"; }
node_addr() { printf '%s.%s' "$SUBNET" "$(($1 + 1))"; }
state_dir() { printf '%s/%s' "$STATE_ROOT" "$1"; }

# The namespaces of cluster NAME that exist (from ip netns, so this also finds a half-built one).
cluster_namespaces() {
  local name="$1" ns
  ip netns list 2>/dev/null | while read -r ns _; do
    if [[ "$ns" =~ ^${NS_PREFIX}-${name}-(sw|[0-9]+)$ ]]; then printf '%s\n' "$ns"; fi
  done
}
cluster_exists() { [ -n "$(cluster_namespaces "$1")" ] || [ -d "$(state_dir "$1")" ]; }

# key=value settings written by `up`.
meta_get() {
  local file key="$2" k v
  file="$(state_dir "$1")/meta"
  [ -f "$file" ] || die "cluster '$1' is not up (no $file); see: $PROG list"
  while IFS='=' read -r k v; do
    if [ "$k" = "$key" ]; then printf '%s' "$v"; return 0; fi
  done <"$file"
  die "cluster '$1': '$key' missing from $file"
}
check_node() {
  local nodes
  nodes="$(meta_get "$1" nodes)"
  if ! [[ "$2" =~ ^[0-9]+$ ]] || [ "$2" -ge "$nodes" ]; then
    die "bad node '$2': cluster '$1' has nodes 0..$((nodes - 1))"
  fi
}

# tc rate -> bits/s ("1gbit" -> 1000000000; tc's "bps" units are bytes/s). Empty if not a rate.
rate_bits() {
  local r="${1,,}" num unit mult
  [[ "$r" =~ ^([0-9]+(\.[0-9]+)?)([a-z]*)$ ]] || return 0
  num="${BASH_REMATCH[1]}"
  unit="${BASH_REMATCH[3]}"
  case "$unit" in
    bit | "") mult=1 ;;
    kbit) mult=1000 ;;
    mbit) mult=1000000 ;;
    gbit) mult=1000000000 ;;
    tbit) mult=1000000000000 ;;
    bps) mult=8 ;;
    kbps) mult=8000 ;;
    mbps) mult=8000000 ;;
    gbps) mult=8000000000 ;;
    *) return 0 ;;
  esac
  awk -v n="$num" -v m="$mult" 'BEGIN { printf "%.0f\n", n * m }'
}
# tc time -> microseconds ("0.2ms" -> 200). Empty if not a time.
delay_us() {
  local d="${1,,}" num unit mult
  [[ "$d" =~ ^([0-9]+(\.[0-9]+)?)([a-z]*)$ ]] || return 0
  num="${BASH_REMATCH[1]}"
  unit="${BASH_REMATCH[3]}"
  case "$unit" in
    us | usec | usecs) mult=1 ;;
    ms | msec | msecs) mult=1000 ;;
    s | sec | secs | "") mult=1000000 ;;
    *) return 0 ;;
  esac
  awk -v n="$num" -v m="$mult" 'BEGIN { printf "%.0f\n", n * m }'
}

# Does this kernel have netem? (Tried on lo of a scratch namespace, so nothing else is touched.)
have_netem() {
  local probe ok=1
  probe="$NS_PREFIX-probe-$$"
  ip netns add "$probe" 2>/dev/null || return 1
  if tc -n "$probe" qdisc add dev lo root netem delay 1ms 2>/dev/null; then ok=0; fi
  ip netns del "$probe" 2>/dev/null || true
  return "$ok"
}

# The user-space switch for --delay without netem: one AF_PACKET socket per port, frames are
# forwarded (MAC learning, flooding otherwise) after being held `delay` seconds. The GSO/checksum
# metadata travels with each frame (PACKET_VNET_HDR), so TCP's 64 KiB segments cross in one piece,
# and frames are sent through the port's qdisc, so the tbf on pI still shapes the downlink.
# Each frame is due `delay` after the kernel received it, and the switch wakes up a learnt amount
# early, so its own latency (python, ~85 us a frame here) is part of the delay, not added to it.
# shellcheck disable=SC2016 # python, not shell
SWITCH_PY='
import ctypes, heapq, select, signal, socket, struct, sys, time
delay = float(sys.argv[1]); ports = sys.argv[2:]
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
try:  # wake up on time: timer slack 1 ns instead of 50 us
    ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)
except Exception:
    pass
SOL_PACKET, PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING, SO_TIMESTAMPNS = 263, 15, 23, 35
socks = []
for p in ports:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((p, 0))
    s.setblocking(False)
    socks.append(s)
index = {s: i for i, s in enumerate(socks)}
where = {}   # MAC -> port
queue = []   # (due, seq, in port, frame); due = kernel receive time + delay
seq = 0
early = 0.0  # how much sooner than due to wake up and send: learnt from how late frames leave
early_max = min(delay / 2, 250e-6)
clock = time.time  # the clock of the kernel receive timestamps
sys.stdout.write("switch up: %d ports, delay %.1f us\n" % (len(socks), delay * 1e6)); sys.stdout.flush()
while True:
    timeout = max(0.0, queue[0][0] - early - clock()) if queue else 1.0
    ready, _, _ = select.select(socks, [], [], timeout)
    for s in ready:
        i = index[s]
        while True:
            try:
                frame, anc, _, _ = s.recvmsg(262144, 64)
            except BlockingIOError:
                break
            if len(frame) < 10 + 14:
                continue
            ts = now = clock()
            for lvl, typ, data in anc:
                if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack_from("qq", data)
                    # frames that keep a sender-side (monotonic) time stamp give nonsense here
                    if 0.0 <= now - (sec + nsec * 1e-9) < 0.01:
                        ts = sec + nsec * 1e-9
            where[frame[16:22]] = i  # vnet header (10 bytes), then dst MAC, src MAC
            seq += 1
            heapq.heappush(queue, (ts + delay, seq, i, frame))
    t = clock() + early
    while queue and queue[0][0] <= t:
        due, _, i, frame = heapq.heappop(queue)
        j = where.get(frame[10:16])
        if j is not None and not (frame[10] & 1):
            targets = () if j == i else (j,)
        else:
            targets = [k for k in range(len(socks)) if k != i]
        for k in targets:
            try:
                socks[k].send(frame)
            except OSError:
                pass  # a full queue drops the frame, like a switch
        # steer `early` so that frames leave on time on average (small steps, bounded)
        err = min(max(clock() - due, -50e-6), 50e-6)
        early = min(max(early + 0.1 * err, 0.0), early_max)
'

UP_NAME=""
up_exit() {
  local code=$?
  if [ "$code" -ne 0 ] && [ -n "$UP_NAME" ]; then
    warn "up failed; removing the half-built cluster '$UP_NAME'"
    cmd_down "$UP_NAME" >/dev/null 2>&1 || true
  fi
  exit "$code"
}

cmd_up() {
  local nodes="" rate=1gbit delay=0 name=c0 burst="" mode=auto replace=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) nodes="${2:-}"; shift 2 ;;
      --rate) rate="${2:-}"; shift 2 ;;
      --delay) delay="${2:-}"; shift 2 ;;
      --name) name="${2:-}"; shift 2 ;;
      --burst) burst="${2:-}"; shift 2 ;;
      --delay-mode) mode="${2:-}"; shift 2 ;;
      --replace) replace=1; shift ;;
      *) die "up: unknown option '$1' (see: $PROG help)" ;;
    esac
  done
  need_root "up"
  need_tools ip tc setsid
  check_name "$name"
  if ! [[ "$nodes" =~ ^[0-9]+$ ]] || [ "$nodes" -lt 1 ] || [ "$nodes" -gt 250 ]; then
    die "up: --nodes N (1..250) is required"
  fi
  local bits dus
  bits="$(rate_bits "$rate")"
  [ -n "$bits" ] || die "up: bad --rate '$rate' (examples: 1gbit, 100mbit, 500kbit, 125mbps; 0 = unshaped)"
  dus="$(delay_us "$delay")"
  [ -n "$dus" ] || die "up: bad --delay '$delay' (examples: 0.2ms, 200us, 1ms; 0 = none)"
  if [ -z "$burst" ]; then
    # 1 ms at line rate, at least 32 KiB. tbf cuts a GSO packet bigger than the bucket into
    # 1514-byte frames, which at 1gbit costs enough CPU here to cap TCP at ~75-85% of the rate;
    # 125000 B (1gbit) lets 64 KiB TCP segments through whole (95% of the rate as goodput).
    burst=$(((bits / 8 / 1000) > 32768 ? (bits / 8 / 1000) : 32768))
  fi
  if ! [[ "$burst" =~ ^[0-9]+$ ]] || [ "$burst" -lt 2048 ]; then
    die "up: bad --burst '$burst' (bytes, at least 2048)"
  fi
  case "$mode" in
    auto | netem | switch) ;;
    *) die "up: bad --delay-mode '$mode' (auto, netem or switch)" ;;
  esac

  if cluster_exists "$name"; then
    if [ "$replace" -eq 1 ]; then
      note "cluster '$name' exists; taking it down first (--replace)"
      cmd_down "$name"
    else
      die "cluster '$name' is already up (namespaces: $(cluster_namespaces "$name" | tr '\n' ' ')); take it down with: $PROG down $name (or pass --replace)"
    fi
  fi

  # How the delay is made.
  local how=none
  if [ "$dus" -gt 0 ]; then
    case "$mode" in
      netem)
        have_netem || die "up: --delay-mode netem, but this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM)"
        how=netem ;;
      switch) how=switch ;;
      auto)
        if have_netem; then how=netem; else
          how=switch
          note "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): the ${delay} delay is made by a user-space switch (python3), which costs some CPU"
        fi ;;
    esac
    if [ "$how" = switch ]; then need_tools python3; fi
  fi

  local state sw i ns
  state="$(state_dir "$name")"
  sw="$(ns_sw "$name")"
  # From here on a failure (set -e exits) leaves nothing behind: see up_exit (for `up`; run and
  # selftest take their clusters down on exit anyway).
  UP_NAME="$name"
  mkdir -p "$state"
  {
    printf 'nodes=%s\nrate=%s\nrate_bits=%s\ndelay=%s\ndelay_us=%s\ndelay_how=%s\nburst=%s\n' \
      "$nodes" "$rate" "$bits" "$delay" "$dus" "$how" "$burst"
    printf 'created=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$state/meta"
  : >"$state/bg"

  ip netns add "$sw"
  ns_quiet "$sw"
  ip -n "$sw" link set lo up
  if [ "$how" != switch ]; then
    ip -n "$sw" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    ip -n "$sw" link set br0 up
  fi
  for ((i = 0; i < nodes; i++)); do
    ns="$(ns_node "$name" "$i")"
    ip netns add "$ns"
    ns_quiet "$ns"
    ip -n "$ns" link set lo up
    ip link add "$IFACE" netns "$ns" type veth peer name "p$i" netns "$sw"
    ip -n "$ns" addr add "$(node_addr "$i")/24" dev "$IFACE"
    if [ "$how" = switch ]; then
      ip -n "$sw" link set "p$i" promisc on
    else
      ip -n "$sw" link set "p$i" master br0
    fi
    # Uplink (node -> switch): [netem delay ->] tbf. Downlink (switch -> node): tbf.
    if [ "$how" = netem ]; then
      tc -n "$ns" qdisc add dev "$IFACE" root handle 1: netem delay "${dus}us" limit 100000
      if [ "$bits" -gt 0 ]; then
        tc -n "$ns" qdisc add dev "$IFACE" parent 1:1 handle 10: tbf rate "${bits}bit" burst "$burst" latency 10ms
      fi
    elif [ "$bits" -gt 0 ]; then
      tc -n "$ns" qdisc add dev "$IFACE" root handle 1: tbf rate "${bits}bit" burst "$burst" latency 10ms
    fi
    if [ "$bits" -gt 0 ]; then
      tc -n "$sw" qdisc add dev "p$i" root handle 1: tbf rate "${bits}bit" burst "$burst" latency 10ms
    fi
    ip -n "$sw" link set "p$i" up
    ip -n "$ns" link set "$IFACE" up
  done
  if [ "$how" = switch ]; then
    local ports=() prio=() log="$state/switch.log"
    for ((i = 0; i < nodes; i++)); do ports+=("p$i"); done
    # Real-time priority, so that nodes spinning on their sockets (dllama's turbo mode) on a
    # machine with fewer cores than processes do not keep the frames waiting in the switch.
    if command -v chrt >/dev/null 2>&1 && chrt -f 50 true 2>/dev/null; then
      prio=(chrt -f 50)
    else
      warn "cannot give the user-space switch real-time priority (chrt -f); its delays stretch when the CPUs are busy"
    fi
    ip netns exec "$sw" setsid "${prio[@]}" python3 -c "$SWITCH_PY" "$(awk -v u="$dus" 'BEGIN { printf "%.9f", u / 1e6 }')" "${ports[@]}" \
      </dev/null >"$log" 2>&1 &
    printf '%s\n' "$!" >"$state/switch.pid"
    for ((i = 0; i < 50; i++)); do
      if grep -qs "^switch up" "$log"; then break; fi
      kill -0 "$(cat "$state/switch.pid")" 2>/dev/null || { cat "$log" >&2; die "up: the user-space switch did not start"; }
      sleep 0.1
    done
    grep -qs "^switch up" "$log" || { cat "$log" >&2; die "up: the user-space switch did not start"; }
  fi
  wait_links "$name" "$nodes"
  UP_NAME=""
  local shaped="unshaped" delayed="no delay"
  [ "$bits" -gt 0 ] && shaped="$rate each way"
  [ "$dus" -gt 0 ] && delayed="$delay one-way ($how)"
  note "cluster '$name' up: $nodes node(s) $(node_addr 0)..$(node_addr $((nodes - 1))), $shaped, $delayed"
}

# No IPv6 (router solicitations and MLD reports would show up in the counters); no rp_filter
# surprises. Applies to interfaces created after it (the defaults) and to lo.
ns_quiet() {
  # shellcheck disable=SC2016 # $f is the inner shell's
  ip netns exec "$1" sh -c '
    for f in /proc/sys/net/ipv6/conf/default/disable_ipv6 /proc/sys/net/ipv6/conf/all/disable_ipv6; do
      [ -w "$f" ] && echo 1 >"$f"
    done
    true'
}

# Wait until every eth0 and port is up (veth carrier comes up when both ends are up).
wait_links() {
  local name="$1" nodes="$2" i ns tries
  for ((i = 0; i < nodes; i++)); do
    ns="$(ns_node "$name" "$i")"
    for ((tries = 0; tries < 100; tries++)); do
      if ip -n "$ns" -o link show dev "$IFACE" | grep -q 'state UP'; then break; fi
      sleep 0.02
    done
  done
}

cmd_down() {
  [ $# -eq 1 ] || die "usage: $PROG down NAME"
  local name="$1" state nss ns pid pids=() left i
  check_name "$name"
  need_root "down"
  need_tools ip
  state="$(state_dir "$name")"
  nss="$(cluster_namespaces "$name")"
  if [ -z "$nss" ] && [ ! -d "$state" ]; then
    note "cluster '$name' is not up (nothing to do)"
    return 0
  fi
  # Background processes recorded by `bg` (their whole process groups), then everything that
  # still runs in one of the namespaces.
  for ns in $nss; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do pids+=("$pid"); done
  done
  if [ -f "$state/bg" ] && [ ${#pids[@]} -gt 0 ]; then
    while read -r pid _; do
      # only a group whose leader is still in the cluster (a pid is never reused while it runs)
      if [[ " ${pids[*]} " == *" $pid "* ]]; then kill -TERM -- "-$pid" 2>/dev/null || true; fi
    done <"$state/bg"
  fi
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      left=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
      [ "$left" -eq 0 ] && break
      sleep 0.1
    done
    if [ "$left" -eq 1 ]; then
      kill -KILL "${pids[@]}" 2>/dev/null || true
      sleep 0.1
    fi
  fi
  # Deleting a namespace destroys its interfaces: the veths (both ends) and the bridge.
  for ns in $nss; do
    ip netns del "$ns" 2>/dev/null || warn "could not delete namespace $ns"
  done
  rm -rf "$state"
  note "cluster '$name' down"
}

cmd_exec() {
  [ $# -ge 3 ] || die "usage: $PROG exec NAME NODE [--] CMD..."
  local name="$1" node="$2"
  shift 2
  [ "${1:-}" = "--" ] && shift
  [ $# -ge 1 ] || die "exec: no command"
  need_root "exec"
  check_name "$name"
  check_node "$name" "$node"
  exec ip netns exec "$(ns_node "$name" "$node")" "$@"
}

cmd_bg() {
  [ $# -ge 3 ] || die "usage: $PROG bg NAME NODE [--log FILE] [--] CMD..."
  local name="$1" node="$2" log="" state k pid
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      --log) log="${2:-}"; [ -n "$log" ] || die "bg: --log needs a file"; shift 2 ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  [ $# -ge 1 ] || die "bg: no command"
  need_root "bg"
  check_name "$name"
  check_node "$name" "$node"
  state="$(state_dir "$name")"
  if [ -z "$log" ]; then
    k="$(wc -l <"$state/bg")"
    log="/tmp/cluster-$name-node$node-$k.log"
  fi
  # setsid: a session (and process group) of its own, so Ctrl-C in the caller's terminal does
  # not reach it and `down` can signal the whole group. Without job control the child is not a
  # group leader, so setsid and ip exec in place and $! is CMD's own pid.
  ip netns exec "$(ns_node "$name" "$node")" setsid "$@" </dev/null >>"$log" 2>&1 &
  pid=$!
  printf '%s %s %s\n' "$pid" "$node" "$log" >>"$state/bg"
  printf '%s %s\n' "$pid" "$log"
}

# Counters of one node: rx_bytes tx_bytes rx_packets tx_packets drops (tbf drops on both ends).
node_counters() {
  local name="$1" i="$2" ns sw c drops=0 d
  ns="$(ns_node "$name" "$i")"
  sw="$(ns_sw "$name")"
  c="$(ip netns exec "$ns" cat /sys/class/net/$IFACE/statistics/rx_bytes /sys/class/net/$IFACE/statistics/tx_bytes \
    /sys/class/net/$IFACE/statistics/rx_packets /sys/class/net/$IFACE/statistics/tx_packets | tr '\n' ' ')"
  for d in $( (tc -n "$ns" -s qdisc show dev "$IFACE"; tc -n "$sw" -s qdisc show dev "p$i") 2>/dev/null |
    sed -n 's/.*(dropped \([0-9]*\),.*/\1/p'); do
    drops=$((drops + d))
  done
  printf '%s%s\n' "$c" "$drops"
}

cmd_stats() {
  local name="" json=0 reset=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --json) json=1; shift ;;
      --reset) reset=1; shift ;;
      -*) die "stats: unknown option '$1'" ;;
      *) [ -z "$name" ] || die "usage: $PROG stats NAME [--json] [--reset]"; name="$1"; shift ;;
    esac
  done
  [ -n "$name" ] || die "usage: $PROG stats NAME [--json] [--reset]"
  need_root "stats"
  check_name "$name"
  local nodes state i cur=() base=()
  nodes="$(meta_get "$name" nodes)"
  state="$(state_dir "$name")"
  for ((i = 0; i < nodes; i++)); do cur+=("$(node_counters "$name" "$i")"); done
  if [ "$reset" -eq 1 ]; then
    printf '%s\n' "${cur[@]}" >"$state/stats.base"
    note "stats of '$name' count from now"
    return 0
  fi
  if [ -f "$state/stats.base" ]; then mapfile -t base <"$state/stats.base"; fi
  local rate delay how
  rate="$(meta_get "$name" rate)"
  delay="$(meta_get "$name" delay)"
  how="$(meta_get "$name" delay_how)"
  local -a rows=()
  local rb tb rp tp dr b0 b1 b2 b3 b4 trb=0 ttb=0 trp=0 ttp=0 tdr=0
  for ((i = 0; i < nodes; i++)); do
    read -r rb tb rp tp dr <<<"${cur[$i]}"
    if [ -n "${base[$i]:-}" ]; then
      read -r b0 b1 b2 b3 b4 <<<"${base[$i]}"
      rb=$((rb - b0)); tb=$((tb - b1)); rp=$((rp - b2)); tp=$((tp - b3)); dr=$((dr - b4))
    fi
    rows+=("$i $(node_addr "$i") $rb $tb $rp $tp $dr")
    trb=$((trb + rb)); ttb=$((ttb + tb)); trp=$((trp + rp)); ttp=$((ttp + tp)); tdr=$((tdr + dr))
  done
  local since="up"
  [ ${#base[@]} -gt 0 ] && since="reset"
  if [ "$json" -eq 1 ]; then
    printf '{"cluster":"%s","rate":"%s","delay":"%s","delay_how":"%s","since":"%s","nodes":[' "$name" "$rate" "$delay" "$how" "$since"
    local sep="" n a
    for row in "${rows[@]}"; do
      read -r n a rb tb rp tp dr <<<"$row"
      printf '%s{"node":%s,"addr":"%s","rx_bytes":%s,"tx_bytes":%s,"rx_packets":%s,"tx_packets":%s,"shaper_drops":%s}' \
        "$sep" "$n" "$a" "$rb" "$tb" "$rp" "$tp" "$dr"
      sep=","
    done
    printf '],"total":{"rx_bytes":%s,"tx_bytes":%s,"rx_packets":%s,"tx_packets":%s,"shaper_drops":%s}}\n' "$trb" "$ttb" "$trp" "$ttp" "$tdr"
  else
    printf 'cluster %s: rate %s, delay %s (%s); counters since %s (Ethernet frames on each eth0)\n' "$name" "$rate" "$delay" "$how" "$since"
    printf '%-4s %-11s %14s %14s %10s %10s %7s\n' node addr rx_bytes tx_bytes rx_pkts tx_pkts drops
    for row in "${rows[@]}"; do
      # shellcheck disable=SC2086
      printf '%-4s %-11s %14s %14s %10s %10s %7s\n' $row
    done
    printf '%-4s %-11s %14s %14s %10s %10s %7s\n' all "" "$trb" "$ttb" "$trp" "$ttp" "$tdr"
  fi
}

cmd_env() {
  [ $# -eq 1 ] || die "usage: $PROG env NAME"
  local name="$1" nodes i addrs=()
  check_name "$name"
  nodes="$(meta_get "$name" nodes)"
  for ((i = 0; i < nodes; i++)); do addrs+=("$(node_addr "$i")"); done
  printf 'export CLUSTER_NAME=%q CLUSTER_NODES=%q CLUSTER_SH=%q\n' "$name" "$nodes" "$SELF"
  printf 'export NODE_ADDRS=%q\n' "${addrs[*]}"
  for ((i = 0; i < nodes; i++)); do printf 'export NODE%s_ADDR=%q\n' "$i" "${addrs[$i]}"; done
}

cmd_list() {
  local d name
  [ -d "$STATE_ROOT" ] || return 0
  for d in "$STATE_ROOT"/*/; do
    [ -f "$d/meta" ] || continue
    name="$(basename "$d")"
    printf '%s nodes=%s rate=%s delay=%s (%s) bg=%s\n' "$name" "$(meta_get "$name" nodes)" "$(meta_get "$name" rate)" \
      "$(meta_get "$name" delay)" "$(meta_get "$name" delay_how)" "$(wc -l <"$d/bg")"
  done
}

cmd_drop_caches() {
  need_root "drop-caches"
  sync
  echo 3 >/proc/sys/vm/drop_caches
  note "page cache dropped"
}

RUN_NAME=""
ST_NAMES=""
run_cleanup() {
  local code=$?
  trap - EXIT INT TERM
  if [ -n "$RUN_NAME" ]; then
    cmd_stats "$RUN_NAME" >&2 || true
    cmd_down "$RUN_NAME" || true
  fi
  exit "$code"
}

cmd_run() {
  local up_args=() name="" drop=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --) shift; break ;;
      --drop-caches) drop=1; shift ;;
      --replace) up_args+=("$1"); shift ;;
      --name) name="${2:-}"; shift 2 ;;
      --nodes | --rate | --delay | --burst | --delay-mode) up_args+=("$1" "${2:-}"); shift 2 ;;
      -*) die "run: unknown option '$1'" ;;
      *) break ;;
    esac
  done
  [ $# -ge 1 ] || die "usage: $PROG run [up options] [--drop-caches] [--] CMD..."
  [ -n "$name" ] || name="r$$"
  check_name "$name"
  need_root "run"
  # Refuse before the trap is armed, so an existing cluster of this name is never taken down.
  if cluster_exists "$name" && [[ " ${up_args[*]} " != *" --replace "* ]]; then
    die "cluster '$name' is already up; pick another --name or pass --replace"
  fi
  RUN_NAME="$name"
  trap run_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cmd_up --name "$name" "${up_args[@]}"
  eval "$(cmd_env "$name")"
  [ "$drop" -eq 1 ] && cmd_drop_caches
  local rc=0
  "$@" || rc=$?
  [ "$rc" -eq 0 ] || warn "command exited with $rc"
  exit "$rc"
}

# Helpers for the self-test: a UDP echo + TCP sink server, a UDP round-trip prober and a TCP
# sender that prints Mbit/s.
SELFTEST_PY='
import socket, statistics, sys, threading, time
mode = sys.argv[1]
if mode == "serve":
    def echo():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7007))
        while True:
            d, a = u.recvfrom(2048); u.sendto(d, a)
    def sink(c):
        n = 0
        while True:
            d = c.recv(1 << 20)
            if not d: break
            n += len(d)
        c.sendall(b"%d\n" % n); c.close()
    threading.Thread(target=echo, daemon=True).start()
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", 7008)); t.listen(16)
    print("serving", flush=True)
    while True:
        c, _ = t.accept(); threading.Thread(target=sink, args=(c,), daemon=True).start()
elif mode == "rtt":
    host, n = sys.argv[2], int(sys.argv[3])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1.0); u.connect((host, 7007))
    rtts = []
    for i in range(n + 5):
        t0 = time.perf_counter(); u.send(b"x" * 64); u.recv(2048); dt = time.perf_counter() - t0
        if i >= 5: rtts.append(dt * 1e6)
        time.sleep(0.002)
    rtts.sort()
    print("%.0f %.0f %.0f" % (rtts[0], statistics.median(rtts), rtts[int(len(rtts) * 0.9)]))
elif mode == "send":
    host, secs = sys.argv[2], float(sys.argv[3])
    s = socket.create_connection((host, 7008)); buf = b"\0" * (1 << 16); sent = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        sent += s.send(buf)
    s.shutdown(socket.SHUT_WR)
    got = int(s.makefile().readline())  # what the sink received, once it has all of it
    print("%.1f" % (got * 8 / (time.perf_counter() - t0) / 1e6))
elif mode == "ready":
    host = sys.argv[2]
    for _ in range(100):
        try:
            socket.create_connection((host, 7008), timeout=0.2).close(); sys.exit(0)
        except OSError:
            time.sleep(0.05)
    sys.exit(1)
'

cmd_selftest() {
  need_root "selftest"
  need_tools ip tc setsid python3 awk
  local name="st$$" rate=100mbit delay=1ms secs=3 mode=auto burst=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --rate) rate="$2"; shift 2 ;;
      --delay) delay="$2"; shift 2 ;;
      --seconds) secs="$2"; shift 2 ;;
      --delay-mode) mode="$2"; shift 2 ;;
      --burst) burst=(--burst "$2"); shift 2 ;;
      *) die "selftest: unknown option '$1'" ;;
    esac
  done
  local name2="${name}b"
  ST_NAMES="$name $name2"
  trap 'trap - EXIT INT TERM; for n in $ST_NAMES; do cmd_down "$n" >/dev/null 2>&1 || true; done' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cmd_up --nodes 3 --rate "$rate" --delay "$delay" --delay-mode "$mode" "${burst[@]}" --name "$name"
  local i j fail=0 bits dus how
  bits="$(meta_get "$name" rate_bits)"
  dus="$(meta_get "$name" delay_us)"
  how="$(meta_get "$name" delay_how)"

  for ((i = 0; i < 3; i++)); do
    ip -n "$(ns_node "$name" "$i")" -o link show dev lo | grep -q 'UP' || { warn "lo is not up in node $i"; fail=1; }
    cmd_bg "$name" "$i" --log "/tmp/cluster-$name-serve$i.log" -- python3 -c "$SELFTEST_PY" serve >/dev/null
  done
  for ((i = 0; i < 3; i++)); do
    ip netns exec "$(ns_node "$name" 0)" python3 -c "$SELFTEST_PY" ready "$(node_addr "$i")" ||
      die "selftest: node $i's server is not reachable from node 0"
  done

  echo "== round trip (UDP, 64 B, 200 probes), expected ~2 x $delay + ~0.1 ms (python, veths)"
  local r mn med p90
  for ((i = 0; i < 3; i++)); do
    for ((j = 0; j < 3; j++)); do
      [ "$i" -eq "$j" ] && continue
      if r="$(ip netns exec "$(ns_node "$name" "$i")" python3 -c "$SELFTEST_PY" rtt "$(node_addr "$j")" 200)"; then
        read -r mn med p90 <<<"$r"
        printf '  node %s -> node %s: min %6s us  median %6s us  p90 %6s us\n' "$i" "$j" "$mn" "$med" "$p90"
        if [ "$dus" -gt 0 ] && [ "$med" -lt "$((2 * dus * 9 / 10))" ]; then
          warn "median RTT $med us is well below 2 x delay ($((2 * dus)) us)"
          fail=1
        fi
      else
        warn "node $i cannot reach node $j"
        fail=1
      fi
    done
  done

  echo "== throughput (TCP, ${secs} s each), configured rate $rate (goodput ceiling ~95% of it: Ethernet/IP/TCP headers)"
  local one a b
  one="$(ip netns exec "$(ns_node "$name" 0)" python3 -c "$SELFTEST_PY" send "$(node_addr 1)" "$secs")"
  printf '  node 0 -> node 1:            %7s Mbit/s (%s%% of the rate)\n' "$one" "$(awk -v m="$one" -v b="$bits" 'BEGIN { printf "%.0f", m * 1e8 / b }')"
  # Two senders into one node share that node's downlink (the tbf on its switch port).
  cmd_stats "$name" --reset >/dev/null 2>&1
  ip netns exec "$(ns_node "$name" 1)" python3 -c "$SELFTEST_PY" send "$(node_addr 0)" "$secs" >"/tmp/cluster-$name-s1" &
  local p1=$!
  ip netns exec "$(ns_node "$name" 2)" python3 -c "$SELFTEST_PY" send "$(node_addr 0)" "$secs" >"/tmp/cluster-$name-s2" &
  local p2=$!
  wait "$p1" "$p2" || true
  a="$(cat "/tmp/cluster-$name-s1")"
  b="$(cat "/tmp/cluster-$name-s2")"
  rm -f "/tmp/cluster-$name-s1" "/tmp/cluster-$name-s2"
  printf '  nodes 1+2 -> node 0 at once: %7s + %s = %s Mbit/s (%s%% of the rate: they share node 0'"'"'s downlink)\n' \
    "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", a + b }')" \
    "$(awk -v a="$a" -v b="$b" -v r="$bits" 'BEGIN { printf "%.0f", (a + b) * 1e8 / r }')"
  if [ "$bits" -gt 0 ]; then
    awk -v m="$one" -v b="$bits" 'BEGIN { exit !(m * 1e6 < b * 1.08 && m * 1e6 > b * 0.5) }' ||
      { warn "one-stream throughput $one Mbit/s is far from the $rate rate"; fail=1; }
    awk -v a="$a" -v c="$b" -v b="$bits" 'BEGIN { exit !((a + c) * 1e6 < b * 1.08) }' ||
      { warn "two senders into one node got more than its $rate downlink"; fail=1; }
  fi
  echo "== counters during the two-sender run"
  cmd_stats "$name"

  echo "== a second cluster beside it (same addresses, own namespaces)"
  cmd_up --nodes 2 --rate "$rate" --name "$name2" 2>/dev/null
  if r="$(ip netns exec "$(ns_node "$name2" 0)" sh -c 'cat /sys/class/net/eth0/address; ip -o -4 addr show dev eth0')" &&
    cmd_bg "$name2" 1 --log "/tmp/cluster-$name2-serve.log" -- python3 -c "$SELFTEST_PY" serve >/dev/null &&
    ip netns exec "$(ns_node "$name2" 0)" python3 -c "$SELFTEST_PY" ready "$(node_addr 1)"; then
    echo "  $name2 node 0 reaches its node 1 at $(node_addr 1) while $name is up: ok"
  else
    warn "second cluster did not work"
    fail=1
  fi
  cmd_down "$name2"
  cmd_down "$name"
  rm -f /tmp/cluster-"$name"-serve*.log /tmp/cluster-"$name2"-serve.log
  for ns in $(cluster_namespaces "$name") $(cluster_namespaces "$name2"); do
    warn "namespace $ns left behind"
    fail=1
  done
  if [ "$fail" -eq 0 ]; then echo "selftest: ok (delay via $how)"; else echo "selftest: FAILED"; return 1; fi
}

main() {
  local cmd="${1:-help}"
  [ $# -gt 0 ] && shift
  case "$cmd" in
    up) trap up_exit EXIT; cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    exec) cmd_exec "$@" ;;
    bg) cmd_bg "$@" ;;
    stats) cmd_stats "$@" ;;
    env) cmd_env "$@" ;;
    list) cmd_list "$@" ;;
    run) cmd_run "$@" ;;
    drop-caches) cmd_drop_caches ;;
    selftest) cmd_selftest "$@" ;;
    help | -h | --help) usage ;;
    *) usage >&2; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
