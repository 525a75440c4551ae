#!/usr/bin/env bash
# Benchmark: 10,000 /32 prefixes from Berth and from gobgpd to BIRD, in one run.
#
# Both speakers hold the routes before the session exists; BIRD's protocol for
# each is enabled in turn, and the time from `birdc enable` until BIRD's table
# holds all 10,000 routes from that speaker is measured (session set-up
# included, identical BIRD settings for both). Repeated ROUNDS times,
# alternating; the median is reported together with RSS of both daemons.
#
# Usage: crates/bgp/bench/bird-10k.sh [ROUNDS]    (root; bird2, gobgpd, iproute2, python3)
# Everything runs in network namespaces created here and removed on exit.
set -euo pipefail
rounds="${1:-3}"
N=10000
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -q -p berth-bgp --bin berth-bgp
BERTH="$CARGO_TARGET_DIR/release/berth-bgp"

id="bb$$"
dir="$(mktemp -d /tmp/berth-bench.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.2
    for ns in "${id}r" "${id}b" "${id}g" "${id}f"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

ip netns add "${id}f"
ip -n "${id}f" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "${id}f" link set br0 up
host=0
for n in r b g; do
    case $n in r) h=1 ;; b) h=11 ;; g) h=12 ;; esac
    ip netns add "${id}$n"
    ip -n "${id}$n" link set lo up
    ip -n "${id}f" link add "v$n" type veth peer name eth0 netns "${id}$n"
    ip -n "${id}f" link set "v$n" master br0 up
    ip -n "${id}$n" addr add "198.18.0.$h/24" dev eth0
    ip -n "${id}$n" link set eth0 up
done

# 10,000 /32s: 198.19.0.0 .. 198.19.39.15
python3 - "$dir" "$N" <<'PY'
import struct, sys
d, n = sys.argv[1], int(sys.argv[2])
addrs = [(198 << 24) | (19 << 16) | i for i in range(n)]
with open(f"{d}/berth.toml", "w") as f:
    f.write('router_id = "198.18.0.11"\nlocal_as = 64513\n')
    f.write('[[peer]]\naddress = "198.18.0.1"\nremote_as = 64512\nhold_time = 30\npassive = true\n')
    for a in addrs:
        f.write('[[announce]]\nprefix = "%d.%d.%d.%d/32"\n' % (a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255))
# MRT TABLE_DUMP_V2 (RFC 6396) for `gobgp mrt inject global`.
def mrt(sub, body):
    return struct.pack("!IHHI", 0, 13, sub, len(body)) + body
peer = struct.pack("!B", 2) + bytes([198, 18, 0, 12]) + bytes([198, 18, 0, 12]) + struct.pack("!I", 64514)
out = mrt(1, bytes([198, 18, 0, 12]) + struct.pack("!H", 0) + struct.pack("!H", 1) + peer)
attrs = bytes([0x40, 1, 1, 0]) + bytes([0x40, 2, 0]) + bytes([0x40, 3, 4, 198, 18, 0, 12])
for seq, a in enumerate(addrs):
    entry = struct.pack("!HIH", 0, 0, len(attrs)) + attrs
    out += mrt(2, struct.pack("!IB", seq, 32) + struct.pack("!I", a) + struct.pack("!H", 1) + entry)
open(f"{d}/routes.mrt", "wb").write(out)
PY

cat > "$dir/gobgpd.toml" <<G
[global.config]
  as = 64514
  router-id = "198.18.0.12"
  port = 179
[[neighbors]]
  [neighbors.config]
    neighbor-address = "198.18.0.1"
    peer-as = 64512
  [neighbors.timers.config]
    hold-time = 30
  [neighbors.transport.config]
    passive-mode = true
G
cat > "$dir/bird.conf" <<B
router id 198.18.0.1;
protocol device { scan time 10; }
template bgp spk { local as 64512; hold time 30; connect retry time 1; connect delay time 0; error wait time 1, 10;
  ipv4 { import all; export none; }; }
protocol bgp berth from spk { neighbor 198.18.0.11 as 64513; disabled yes; }
protocol bgp gobgp from spk { neighbor 198.18.0.12 as 64514; disabled yes; }
B

setsid ip netns exec "${id}b" "$BERTH" --config "$dir/berth.toml" >"$dir/berth.log" 2>&1 &
pids+=($!)
berth_pid=$!
setsid ip netns exec "${id}g" gobgpd -f "$dir/gobgpd.toml" -p --api-hosts 127.0.0.1:50051 --pprof-disable >"$dir/gobgpd.log" 2>&1 &
pids+=($!)
gobgp_pid=$!
setsid ip netns exec "${id}r" bird -f -c "$dir/bird.conf" -s "$dir/bird.ctl" -P "$dir/bird.pid" >"$dir/bird.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$dir/bird.ctl" ] && break; sleep 0.1; done
for _ in $(seq 100); do ip netns exec "${id}g" gobgp global >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "${id}g" gobgp mrt inject global "$dir/routes.mrt" >/dev/null
have=0
for _ in $(seq 300); do
    have=$(ip netns exec "${id}g" gobgp global rib summary -a ipv4 | grep -o 'Destination: [0-9]*' | grep -o '[0-9]*' || true)
    [ "$have" = "$N" ] && break
    sleep 0.1
done
if [ "$have" != "$N" ]; then
    # `gobgp mrt inject` can lose the tail of its stream; add what is missing one by one.
    ip netns exec "${id}g" gobgp global rib -a ipv4 | grep -o '198\.19\.[0-9]*\.[0-9]*/32' | sort >"$dir/have.txt"
    python3 -c "
n=$N
for i in range(n): print('198.19.%d.%d/32' % (i >> 8, i & 255))" | sort >"$dir/want.txt"
    comm -13 "$dir/have.txt" "$dir/want.txt" | while read -r p; do
        ip netns exec "${id}g" gobgp global rib add "$p" -a ipv4 nexthop 198.18.0.12 >/dev/null
    done
    have=$(ip netns exec "${id}g" gobgp global rib summary -a ipv4 | grep -o 'Destination: [0-9]*' | grep -o '[0-9]*' || true)
fi
[ "$have" = "$N" ] || { echo "gobgpd holds $have routes, want $N" >&2; exit 1; }

count() { # routes BIRD holds from protocol $1
    birdc -s "$dir/bird.ctl" show route protocol "$1" count 2>/dev/null | grep -o '^[0-9]* of' | grep -o '^[0-9]*' || echo 0
}
now() { date +%s.%N; }
measure() { # protocol -> "seconds-from-enable seconds-from-Established" until N routes
    local p=$1 t0 te="" t1
    t0=$(now)
    birdc -s "$dir/bird.ctl" enable "$p" >/dev/null
    while :; do
        if [ -z "$te" ] && birdc -s "$dir/bird.ctl" show protocols "$p" | grep Established >/dev/null; then te=$(now); fi
        if [ -n "$te" ] && [ "$(count "$p")" -ge "$N" ]; then break; fi
        sleep 0.005
        if awk -v a="$(now)" -v b="$t0" 'BEGIN{exit !(a-b>120)}'; then echo "timeout for $p" >&2; exit 1; fi
    done
    t1=$(now)
    birdc -s "$dir/bird.ctl" disable "$p" >/dev/null
    while [ "$(count "$p")" -gt 0 ]; do sleep 0.05; done
    awk -v a="$t1" -v b="$t0" -v e="$te" 'BEGIN{printf "%.3f %.3f\n", a-b, a-e}'
}
b_tot=(); b_est=(); g_tot=(); g_est=()
sleep 1
for r in $(seq "$rounds"); do
    read -r tot est < <(measure berth); b_tot+=("$tot"); b_est+=("$est")
    read -r tot est < <(measure gobgp); g_tot+=("$tot"); g_est+=("$est")
    echo "round $r: berth ${b_tot[-1]} s (${b_est[-1]} s after Established), gobgpd ${g_tot[-1]} s (${g_est[-1]} s after Established)" >&2
done
# Routes advertised again for the RSS figure.
birdc -s "$dir/bird.ctl" enable berth >/dev/null
while [ "$(count berth)" -lt "$N" ]; do sleep 0.05; done
rss() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
hwm() { awk '/VmHWM/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
bt=$(median "${b_tot[@]}"); be=$(median "${b_est[@]}"); gt=$(median "${g_tot[@]}"); ge=$(median "${g_est[@]}")
echo
echo "10,000 /32 routes to BIRD $(bird --version 2>&1 | awk '{print $3}'), median of $rounds rounds, $(nproc) cores"
echo
echo "| speaker | enable -> 10k in BIRD | routes/s | rate vs gobgpd | Established seen -> 10k (birdc polling, ~10 ms grain) | RSS with 10k routes | peak RSS |"
echo "|---|---|---|---|---|---|---|"
gv=$(gobgpd --version | awk '{print $3}')
awk -v t="$bt" -v e="$be" -v ge="$ge" -v n="$N" -v m="$(rss $berth_pid)" -v h="$(hwm $berth_pid)" \
    -v gt="$gt" 'BEGIN{printf "| berth-bgp (release) | %.3f s | %d | %.2fx | %.3f s | %s MiB | %s MiB |\n", t, n/t, gt/t, e, m, h}'
awk -v t="$gt" -v e="$ge" -v n="$N" -v m="$(rss $gobgp_pid)" -v h="$(hwm $gobgp_pid)" -v v="$gv" \
    'BEGIN{printf "| gobgpd %s | %.3f s | %d | 1.00x | %.3f s | %s MiB | %s MiB |\n", v, t, n/t, e, m, h}'
