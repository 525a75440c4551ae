#!/usr/bin/env bash
# BFD failover measurement, repeated: speaker link down -> route deleted from
# the routers' kernel tables.
#
# One lab, kept up for all trials:
#   r1  BIRD 2   router 198.18.0.1   (peers: s1)
#   r2  FRR 8.4  router 198.18.0.2   (peers: s1, s3; zebra + bfdd + bgpd)
#   s1  berth-bgp speaker 198.18.0.11 announcing 198.19.100.10/32 to r1 and r2
#   s3  BIRD 2   speaker 198.18.0.13 announcing 198.19.100.30/32 to r2 (reference)
# BFD 100 ms x 3 everywhere. Each trial waits for routes + BFD Up, lets the
# timers settle for 1.5 s plus a random 0-100 ms (so the link goes down at a
# random phase of the transmit timer), takes the speaker's eth0 down, waits
# for the routes to go, brings the link up again.
#
# Recorded per trial: t0 (just before `ip link set eth0 down`), kernel route
# delete events (`ip -ts monitor route` in r1/r2), the BFD packets the routers
# received (tcpdump in r1/r2: age of the last packet from the speaker at t0,
# and the speaker's transmit gaps), and with DEBUG=1 FRR's own debug logs
# (bfdd state change, bgpd BFD event / withdraw to zebra, zebra netlink delete)
# for a breakdown of FRR's pipeline.
#
# Usage: crates/bgp/bench/bfd-failover.sh [TRIALS] [OUTDIR]
#        env DEBUG=1 for FRR debug logs, SPEAKERS="s1 s3" to choose speakers.
# Root; bird2 frr tcpdump iproute2 python3. Namespaces, PIDs and FRR's
# /var/tmp/frr/<daemon>.<pid>/ are removed on exit.
set -euo pipefail
trials="${1:-20}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
profile="${PROFILE:-debug}"
if [ "$profile" = release ]; then
    cargo build --release -q -p berth-bgp --bin berth-bgp
else
    cargo build -q -p berth-bgp --bin berth-bgp
fi
BERTH="$CARGO_TARGET_DIR/$profile/berth-bgp"
speakers="${SPEAKERS:-s1 s3}"
debug="${DEBUG:-0}"

id="bf$$"
dir="${2:-$(mktemp -d /tmp/berth-bfdfo.XXXXXX)}"
mkdir -p "$dir"
chmod 0755 "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${pids[@]}"; do
        for d in zebra bfdd bgpd; do rm -rf "/var/tmp/frr/$d.$p"; done
    done
    for ns in r1 r2 s1 s3 f; do ip netns del "${id}$ns" 2>/dev/null || true; done
}
trap cleanup EXIT

spawn() { # ns name cmd...
    local ns=$1 name=$2
    shift 2
    setsid ip netns exec "${id}$ns" "$@" >"$dir/$name.log" 2>&1 </dev/null &
    pids+=($!)
}

ip netns add "${id}f"
ip -n "${id}f" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "${id}f" link set br0 up
for n in r1:1 r2:2 s1:11 s3:13; do
    ns=${n%%:*} h=${n##*:}
    ip netns add "${id}$ns"
    ip -n "${id}$ns" link set lo up
    ip -n "${id}f" link add "v$ns" type veth peer name eth0 netns "${id}$ns"
    ip -n "${id}f" link set "v$ns" master br0 up
    ip -n "${id}$ns" addr add "198.18.0.$h/24" dev eth0
    ip -n "${id}$ns" link set eth0 up
done

# ---- r1: BIRD router ----
cat >"$dir/r1.conf" <<EOF
router id 198.18.0.1;
protocol device { scan time 1; }
protocol kernel k4 { ipv4 { export all; import none; }; learn off; persist off; merge paths on limit 16; }
protocol bfd { interface "eth0" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }
protocol bgp s1 { local as 64512; neighbor 198.18.0.11 as 64513; hold time 3; keepalive time 1;
  connect retry time 1; connect delay time 1; error wait time 1, 10; bfd on;
  ipv4 { import all; export none; }; }
EOF
spawn r1 r1-bird bird -f -c "$dir/r1.conf" -s "$dir/r1.ctl" -P "$dir/r1.pid"

# ---- s3: BIRD speaker (reference) ----
cat >"$dir/s3.conf" <<EOF
router id 198.18.0.13;
protocol device { scan time 1; }
protocol static { ipv4; route 198.19.100.30/32 blackhole; }
protocol bfd { interface "eth0" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }
protocol bgp r2 { local as 64514; neighbor 198.18.0.2 as 64512; hold time 3; keepalive time 1;
  connect retry time 1; connect delay time 1; error wait time 1, 10; bfd on;
  ipv4 { import none; export all; next hop self; }; }
EOF
spawn s3 s3-bird bird -f -c "$dir/s3.conf" -s "$dir/s3.ctl" -P "$dir/s3.pid"

# ---- r2: FRR router ----
f="$dir/frr"
mkdir -p "$f"
if [ "$debug" = 1 ]; then
    dbg_log() { printf 'log file %s/%s.dlog debugging\nlog timestamp precision 6\n' "$f" "$1"; }
    zdbg="debug zebra rib\ndebug zebra kernel\ndebug zebra dplane\n"
    bdbg="debug bfd peer\ndebug bfd zebra\n"
    gdbg="debug bgp bfd\ndebug bgp neighbor-events\ndebug bgp zebra\ndebug bgp updates\n"
else
    dbg_log() { :; }
    zdbg="" bdbg="" gdbg=""
fi
{ echo "hostname r"; dbg_log zebra; printf "$zdbg"; } >"$f/zebra.conf"
{ echo "hostname r"; dbg_log bfdd; printf "$bdbg"
  printf 'bfd\n profile fast\n  receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!\n'; } >"$f/bfdd.conf"
{ echo "frr defaults traditional"; echo "hostname r"; dbg_log bgpd; printf "$gdbg"
  cat <<EOF
!
router bgp 64512
 bgp router-id 198.18.0.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 timers bgp 1 3
 neighbor 198.18.0.11 remote-as 64513
 neighbor 198.18.0.11 timers connect 1
 neighbor 198.18.0.11 bfd profile fast
 neighbor 198.18.0.13 remote-as 64514
 neighbor 198.18.0.13 timers connect 1
 neighbor 198.18.0.13 bfd profile fast
 address-family ipv4 unicast
  maximum-paths 8
  neighbor 198.18.0.11 activate
  neighbor 198.18.0.13 activate
 exit-address-family
!
EOF
} >"$f/bgpd.conf"
: >"$f/vtysh.conf"
chown -R frr:frr "$f"
spawn r2 r2-zebra /usr/lib/frr/zebra -f "$f/zebra.conf" -i "$f/zebra.pid" --vty_socket "$f" -z "$f/zserv.api"
for _ in $(seq 100); do [ -S "$f/zserv.api" ] && break; sleep 0.1; done
spawn r2 r2-bfdd /usr/lib/frr/bfdd -f "$f/bfdd.conf" -i "$f/bfdd.pid" --vty_socket "$f" -z "$f/zserv.api" --bfdctl "$f/bfdd.sock"
spawn r2 r2-bgpd /usr/lib/frr/bgpd -f "$f/bgpd.conf" -i "$f/bgpd.pid" --vty_socket "$f" -z "$f/zserv.api"
vtysh() { command vtysh --vty_socket "$f" -c "$1" 2>/dev/null; }

# ---- s1: Berth speaker ----
cat >"$dir/s1.toml" <<EOF
router_id = "198.18.0.11"
local_as = 64513
status_file = "$dir/s1.status"
[[peer]]
address = "198.18.0.1"
remote_as = 64512
hold_time = 3
bfd = { min_rx_ms = 100, min_tx_ms = 100, multiplier = 3 }
[[peer]]
address = "198.18.0.2"
remote_as = 64512
hold_time = 3
bfd = { min_rx_ms = 100, min_tx_ms = 100, multiplier = 3 }
[[announce]]
prefix = "198.19.100.10/32"
EOF
RUST_LOG="${RUST_LOG:-info}" spawn s1 s1-berth "$BERTH" --config "$dir/s1.toml"

# Monitors and captures (kept for the whole run).
for s in s1 s3; do
    spawn $s link-$s env TZ=UTC ip -ts monitor link
done
for r in r1 r2; do
    spawn $r mon-$r env TZ=UTC ip -ts monitor route
    spawn $r cap-$r tcpdump -n -i eth0 -tt -l -U udp port 3784
done

route_via() { ip -n "${id}$1" -4 route show "$2" 2>/dev/null | grep -c "via $3" || true; }
ready() { # speaker
    case $1 in
    s1)
        [ "$(route_via r1 198.19.100.10 198.18.0.11)" = 1 ] && [ "$(route_via r2 198.19.100.10 198.18.0.11)" = 1 ] &&
            vtysh "show bfd peer 198.18.0.11" | grep "Status: up" >/dev/null &&
            birdc -s "$dir/r1.ctl" show bfd sessions | grep " Up " >/dev/null
        ;;
    s3)
        [ "$(route_via r2 198.19.100.30 198.18.0.13)" = 1 ] &&
            vtysh "show bfd peer 198.18.0.13" | grep "Status: up" >/dev/null
        ;;
    esac
}
gone() {
    case $1 in
    s1) [ "$(route_via r1 198.19.100.10 198.18.0.11)" = 0 ] && [ "$(route_via r2 198.19.100.10 198.18.0.11)" = 0 ] ;;
    s3) [ "$(route_via r2 198.19.100.30 198.18.0.13)" = 0 ] ;;
    esac
}

: >"$dir/trials.txt"
for sp in $speakers; do
    for i in $(seq "$trials"); do
        t=0
        until ready "$sp"; do
            sleep 0.1
            t=$((t + 1))
            if [ $t -gt 600 ]; then echo "$sp trial $i: not ready after 60 s" >&2; exit 1; fi
        done
        sleep "1.5$(printf '%02d' $((RANDOM % 100)))"
        if [ "$i" = 1 ]; then
            case $sp in
            s1) vtysh "show bfd peer 198.18.0.11" >"$dir/frr-bfd-s1.txt"
                birdc -s "$dir/r1.ctl" show bfd sessions >"$dir/bird-bfd-s1.txt" ;;
            s3) vtysh "show bfd peer 198.18.0.13" >"$dir/frr-bfd-s3.txt" ;;
            esac
        fi
        t0=$(date +%s.%N)
        ip -n "${id}$sp" link set eth0 down
        t=0
        until gone "$sp"; do
            sleep 0.01
            t=$((t + 1))
            if [ $t -gt 1000 ]; then echo "$sp trial $i: route still there after 10 s" >&2; break; fi
        done
        echo "$sp $i $t0" >>"$dir/trials.txt"
        echo "$sp trial $i done" >&2
        sleep 0.3
        ip -n "${id}$sp" link set eth0 up
    done
done
sleep 0.5
python3 "$here/bfd-failover-report.py" "$dir"
echo "logs in $dir" >&2
