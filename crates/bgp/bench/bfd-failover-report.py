#!/usr/bin/env python3
"""Report for bfd-failover.sh: per speaker and router, link down -> kernel
route delete, the age of the last BFD packet the router received from the
speaker at link down, and what the router took after its detection deadline
(last packet + 3 x 100 ms). With FRR debug logs, FRR's pipeline stages too."""
import datetime
import os
import re
import statistics
import sys

d = sys.argv[1]
SPK = {"s1": ("198.18.0.11", "198.19.100.10", ["r1", "r2"]), "s3": ("198.18.0.13", "198.19.100.30", ["r2"])}
NAME = {"r1": "BIRD", "r2": "FRR"}
DETECT = 0.300


def read(name):
    p = os.path.join(d, name)
    return open(p, errors="replace").read().splitlines() if os.path.exists(p) else []


def iso(ts):
    return datetime.datetime.fromisoformat(ts).replace(tzinfo=datetime.timezone.utc).timestamp()


trials = [(s, int(i), float(t)) for s, i, t in (l.split() for l in read("trials.txt"))]
deletes, adds = {}, {}
for r in ("r1", "r2"):
    ev, ad = [], []
    for l in read(f"mon-{r}.log"):
        m = re.match(r"\[(\S+)\] (Deleted )?(\S+) ", l)
        if m:
            (ev if m.group(2) else ad).append((iso(m.group(1)), m.group(3)))
    deletes[r], adds[r] = ev, ad
links = {}
for sp in ("s1", "s3"):
    ev = []
    for l in read(f"link-{sp}.log"):
        m = re.match(r"\[(\S+)\] .*eth0.*state DOWN", l)
        if m:
            ev.append(iso(m.group(1)))
    links[sp] = ev
pkts = {}
for r in ("r1", "r2"):
    ev = []
    for l in read(f"cap-{r}.log"):
        m = re.match(r"(\d+\.\d+) IP (\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.3784", l)
        if m:
            ev.append((float(m.group(1)), m.group(2)))
    pkts[r] = ev

# FRR debug logs (DEBUG=1): "2026/11/21 12:31:38.123456 BFD: ..." (UTC).
def frr_log(name):
    ev = []
    for l in read(f"frr/{name}.dlog"):
        m = re.match(r"(\d{4})/(\d\d)/(\d\d) (\d\d:\d\d:\d\d\.\d+) (.*)", l)
        if m:
            ev.append((iso(f"{m.group(1)}-{m.group(2)}-{m.group(3)}T{m.group(4)}"), m.group(5)))
    return ev

flog = {n: frr_log(n) for n in ("bfdd", "bgpd", "zebra")}
STAGES = [
    ("bfdd detect", "bfdd", lambda l, ip: "state-change" in l and ip in l and "-> down" in l),
    ("bgpd BFD down", "bgpd", lambda l, ip: ip in l and "bfd state Up -> Down" in l),
    ("bgpd clearing done", "bgpd", lambda l, ip: ip in l and "Clearing_Completed" in l),
    ("bgpd route to zebra", "bgpd", lambda l, ip: ("Tx route delete" in l or "withdraw" in l.lower()) and PFX[ip] in l),
    ("zebra netlink del", "zebra", lambda l, ip: "netlink" in l.lower() and "RTM_DELROUTE" in l and PFX[ip] in l),
]
PFX = {v[0]: v[1] for v in SPK.values()}


def dist(xs):
    if not xs:
        return "-"
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return f"n={len(xs):2d} min {xs[0]:6.1f}  median {statistics.median(xs):6.1f}  p90 {p90:6.1f}  max {xs[-1]:6.1f}"


out = []
for sp, (ip, pfx, routers) in SPK.items():
    tr = [t for t in trials if t[0] == sp]
    if not tr:
        continue
    for r in routers:
        total, cmd, age, after, gaps, stages = [], [], [], [], [], {s[0]: [] for s in STAGES}
        for (_, i, tcmd) in tr:
            # Reference: the kernel's link-down event in the speaker's namespace
            # (`ip -ts monitor link`); t0 of the command if missing.
            lk = [t for t in links.get(sp, []) if tcmd <= t < tcmd + 1]
            t0 = lk[0] if lk else tcmd
            dl = [t for (t, p) in deletes[r] if p == pfx and t > t0 and t < t0 + 10]
            # Skip a trial whose route was already gone at link down (a flap
            # between speaker and router, not the failure being measured).
            ev = [(t, True) for (t, p) in deletes[r] if p == pfx and t0 - 3 < t <= t0]
            ev += [(t, False) for (t, p) in adds[r] if p == pfx and t0 - 3 < t <= t0]
            if ev and max(ev)[1]:
                print(f"{sp} trial {i} {NAME[r]}: route already gone at link down, skipped", file=sys.stderr)
                continue
            mine = [t for (t, src) in pkts[r] if src == ip]
            # No packet gets through once the link is down, and the link is
            # not brought up again before the route is gone: the last packet
            # seen within 200 ms of the command is the last one sent.
            before = [t for t in mine if t < tcmd + 0.2]
            late = [t for t in before if t > t0 + 0.001]
            if not dl or not before:
                print(f"{sp} trial {i} {NAME[r]}: no delete event or no packet", file=sys.stderr)
                continue
            last = before[-1]
            total.append((dl[0] - t0) * 1000)
            cmd.append((dl[0] - tcmd) * 1000)
            age.append((t0 - last) * 1000)
            after.append((dl[0] - (last + DETECT)) * 1000)
            w = [t for t in before if t > t0 - 1.2]
            gaps += [(b - a) * 1000 for a, b in zip(w, w[1:])]
            if late:
                print(f"{sp} trial {i} {NAME[r]}: {len(late)} packet(s) after link down", file=sys.stderr)
            if r == "r2" and flog["bfdd"]:
                prev = last + DETECT
                for (name, daemon, pred) in STAGES:
                    hit = [t for (t, l) in flog[daemon] if t > t0 and t < t0 + 5 and pred(l, ip)]
                    if hit:
                        stages[name].append((hit[0] - (last + DETECT)) * 1000)
        out.append(f"== speaker {sp} ({'Berth' if sp == 's1' else 'BIRD'}) -> router {NAME[r]}")
        out.append(f"  link down (kernel link event) -> route deleted (ms): {dist(total)}")
        out.append(f"  `ip link set down` issued -> route deleted (ms):     {dist(cmd)}")
        out.append(f"  age of last BFD packet at link down:    {dist(age)}")
        out.append(f"  delete - (last packet + 300 ms):       {dist(after)}")
        out.append(f"  speaker's transmit gaps (ms):           {dist(gaps)}")
        for name, xs in stages.items():
            if xs:
                out.append(f"  FRR {name:20s} - (last + 300 ms): {dist(xs)}")
print("\n".join(out))
