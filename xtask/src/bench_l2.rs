//! `cargo xtask bench l2`: L2 failover of `berth vip` side by side with Debian's keepalived,
//! in the same namespaces on the same bridge (berth-testbed's `VipLab`).
//!
//! - **Failover**: 2 and 3 nodes, a client probing the VIP by UDP every `--interval` (2 ms);
//!   outage = the gap between the last reply before the failure and the first after. Failures:
//!   (a) process killed and its address removed, (b) the node's link down (its switch port),
//!   (c) process frozen (SIGSTOP) and link down, and for Berth alone (a') process killed with
//!   nothing cleaned. `--trials` (20) each, each after a random pause (random phase against the
//!   heartbeat / advertisement timers) on a settled cluster, which is repaired (restarted, link
//!   up, SIGCONT) and left to settle between trials. Variants: keepalived at its defaults
//!   (VRRPv2, advert_int 1 s), keepalived at its minimum (VRRPv3, advert_int 0.01 s: VRRPv2
//!   rounds sub-second intervals to whole seconds), Berth at its defaults, and Berth at the
//!   same rate (heartbeat 10 ms, fence 20 ms, takeover 31 ms).
//! - **Partition** (`--partition`): the announcer of 3 nodes cut off from the other two on the
//!   bridge while the client still reaches it; the client broadcasts an ARP request for the VIP
//!   every 10 ms and counts the MACs answering one request, from 1 s after the cut on.
//! - **CPU hog** (`--hog MINUTES`): Berth at its defaults, 3 nodes and 2 with a witness, with
//!   one busy process per CPU for that long; counts announcer changes and outages over 100 ms.
//!
//! The machine is shared: every table is printed with the load average at its start and end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use berth_testbed::{
    epoch, loadavg, require_root, require_tools, Announcer, ArpWatch, CpuHog, UdpProber, VipLab,
    LAB_VIP,
};

use crate::bench::{ms, pct};
use crate::release_bins;

const USAGE: &str = "usage: cargo xtask bench l2 [--trials N] [--interval-ms MS] [--nodes 2,3] \
[--only NAME[,NAME...]] [--failures a,b,c,a2] [--partition] [--hog MINUTES] [--no-failover] \
[--markdown FILE] [--bins DIR]   (NAME: keepalived, keepalived-fast, berth, berth-tuned)";

struct Opts {
    trials: usize,
    interval: Duration,
    nodes: Vec<usize>,
    only: Option<Vec<String>>,
    failures: Vec<Failure>,
    partition: bool,
    hog: Option<f64>,
    failover: bool,
    markdown: Option<PathBuf>,
    bins: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Killed, address removed.
    A,
    /// Link down.
    B,
    /// SIGSTOP and link down.
    C,
    /// Killed, nothing cleaned (Berth only).
    A2,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::A => "(a) killed, address removed",
            Failure::B => "(b) link down",
            Failure::C => "(c) SIGSTOP + link down",
            Failure::A2 => "(a') kill -9, nothing cleaned",
        }
    }
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        trials: 20,
        interval: Duration::from_millis(2),
        nodes: vec![2, 3],
        only: None,
        failures: vec![Failure::A, Failure::B, Failure::C, Failure::A2],
        partition: false,
        hog: None,
        failover: true,
        markdown: None,
        bins: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--trials" => o.trials = val()?.parse().context("--trials")?,
            "--interval-ms" => {
                o.interval = Duration::from_millis(val()?.parse().context("--interval-ms")?)
            }
            "--nodes" => {
                o.nodes = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--nodes")?
            }
            "--only" => o.only = Some(val()?.split(',').map(str::to_string).collect()),
            "--failures" => {
                o.failures = val()?
                    .split(',')
                    .map(|s| match s.trim() {
                        "a" => Ok(Failure::A),
                        "b" => Ok(Failure::B),
                        "c" => Ok(Failure::C),
                        "a2" | "a'" => Ok(Failure::A2),
                        x => Err(anyhow!("--failures: unknown failure {x:?} (a, b, c, a2)")),
                    })
                    .collect::<Result<_>>()?
            }
            "--partition" => o.partition = true,
            "--hog" => o.hog = Some(val()?.parse().context("--hog MINUTES")?),
            "--no-failover" => o.failover = false,
            "--markdown" => o.markdown = Some(PathBuf::from(val()?)),
            "--bins" => o.bins = Some(PathBuf::from(val()?)),
            _ => bail!("unknown option {a:?}; {USAGE}"),
        }
    }
    if o.trials == 0 || o.nodes.iter().any(|n| *n < 2) {
        bail!("--trials must be at least 1 and every --nodes value at least 2");
    }
    Ok(o)
}

#[derive(Clone)]
struct Variant {
    name: &'static str,
    label: &'static str,
    announcer: Announcer,
    berth: bool,
    /// How long a repaired node needs before the cluster is back to its settled state (Berth:
    /// `rejoin`; keepalived: a returning higher-priority backup ignores lower-priority
    /// advertisements and preempts when its master-down timer runs out, 3 intervals + skew).
    repair: Duration,
}

fn variants(berth: &Path) -> Vec<Variant> {
    vec![
        Variant {
            name: "keepalived",
            label: "keepalived, defaults (VRRPv2, advert_int 1 s)",
            announcer: Announcer::Keepalived {
                vrrp_version: 2,
                advert_int: 1.0,
            },
            berth: false,
            repair: Duration::from_millis(5000),
        },
        Variant {
            name: "berth",
            label: "Berth, defaults (heartbeat 50 ms, fence 300 ms, takeover 400 ms)",
            announcer: Announcer::Berth {
                bin: berth.to_path_buf(),
                extra: String::new(),
            },
            berth: true,
            repair: Duration::from_millis(2500),
        },
        Variant {
            name: "keepalived-fast",
            label: "keepalived, minimum (VRRPv3, advert_int 0.01 s)",
            announcer: Announcer::Keepalived {
                vrrp_version: 3,
                advert_int: 0.01,
            },
            berth: false,
            repair: Duration::from_millis(500),
        },
        Variant {
            name: "berth-tuned",
            label: "Berth, same rate (heartbeat 10 ms, fence 20 ms, takeover 31 ms)",
            announcer: Announcer::Berth {
                bin: berth.to_path_buf(),
                extra:
                    "heartbeat = \"10ms\"\nfence = \"20ms\"\ntakeover = \"31ms\"\nrejoin = \"1s\"\n"
                        .into(),
            },
            berth: true,
            repair: Duration::from_millis(1500),
        },
    ]
}

/// Runs the L2 benchmark.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    require_root();
    require_tools(&["ip", "tcpdump", "nft", "keepalived"]);
    let bins = match &o.bins {
        Some(b) => b.clone(),
        None => release_bins()?,
    };
    let berth = bins.join("berth");
    let vs: Vec<Variant> = variants(&berth)
        .into_iter()
        .filter(|v| {
            o.only
                .as_ref()
                .is_none_or(|only| only.iter().any(|n| n == v.name))
        })
        .collect();
    let mut md = String::new();
    if o.failover {
        failover_tables(&o, &vs, &mut md)?;
    }
    if o.partition {
        partition_table(&vs, &mut md)?;
    }
    if let Some(minutes) = o.hog {
        hog_table(&berth, minutes, o.interval, &mut md)?;
    }
    if let Some(path) = &o.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
        println!("\nmarkdown written to {}", path.display());
    }
    Ok(())
}

/// Outage samples of one cell; `None` is a trial with no failover within the limit.
type Samples = Vec<Option<Duration>>;

fn failover_tables(o: &Opts, vs: &[Variant], md: &mut String) -> Result<()> {
    let mut results: BTreeMap<(usize, &'static str, &'static str), Samples> = BTreeMap::new();
    let load0 = loadavg();
    let t0 = Instant::now();
    for &n in &o.nodes {
        for v in vs {
            let mut lab = VipLab::new(n, n == 2)?;
            lab.start_all(&v.announcer, false)?;
            let p = lab.prober(false, o.interval)?;
            lab.wait_announcer(&p, Duration::from_secs(20))
                .map_err(|e| anyhow!("{}: {e}\n{}", v.name, lab.log(0)))?;
            settle(&lab, &p, Duration::from_secs(2))?;
            for &f in &o.failures {
                if f == Failure::A2 && !v.berth {
                    continue;
                }
                let mut samples = Vec::new();
                let mut discarded = 0;
                while samples.len() < o.trials {
                    let t = samples.len();
                    let Some(s) = trial(&mut lab, &p, v, f)? else {
                        discarded += 1;
                        if discarded > o.trials {
                            bail!(
                                "{}: more than {} trials hit a node that was not announcing",
                                v.name,
                                o.trials
                            );
                        }
                        eprintln!(
                            "bench l2: trial discarded: the failed node was not the one answering"
                        );
                        continue;
                    };
                    eprintln!(
                        "bench l2: {n} nodes, {}, {}: trial {}/{}: {}",
                        v.name,
                        f.label(),
                        t + 1,
                        o.trials,
                        s.map_or("no failover".into(), |d| format!("{:.1} ms", ms(d)))
                    );
                    samples.push(s);
                }
                results.insert((n, v.name, f.label()), samples);
            }
        }
    }
    let load1 = loadavg();
    let mut out = String::new();
    writeln!(
        out,
        "L2 failover, outage in ms as the client sees it (UDP probe every {} ms; {} trials per cell, random phase). \
         Load average {load0} at the start, {load1} at the end; {:.0} min.",
        o.interval.as_millis(),
        o.trials,
        t0.elapsed().as_secs_f64() / 60.0
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| nodes | announcer | failure | n | min | median | p90 | p99 | max | median × keepalived (same rate) |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
    for &n in &o.nodes {
        for v in vs {
            for &f in &o.failures {
                let Some(s) = results.get(&(n, v.name, f.label())) else {
                    continue;
                };
                let mut ok: Vec<Duration> = s.iter().flatten().copied().collect();
                ok.sort();
                let lost = s.len() - ok.len();
                let peer = match v.name {
                    "berth" => Some("keepalived"),
                    "berth-tuned" => Some("keepalived-fast"),
                    _ => None,
                };
                let ratio = peer
                    .and_then(|p| results.get(&(n, p, f.label())))
                    .and_then(|ps| {
                        let mut k: Vec<Duration> = ps.iter().flatten().copied().collect();
                        k.sort();
                        (!k.is_empty() && !ok.is_empty())
                            .then(|| ms(pct(&ok, 50.0)) / ms(pct(&k, 50.0)).max(0.001))
                    })
                    .map_or("".to_string(), |r| format!("{r:.2}"));
                if ok.is_empty() {
                    writeln!(
                        out,
                        "| {n} | {} | {} | {} | – | – | – | – | – | no failover in {lost} trials |",
                        v.label,
                        f.label(),
                        s.len()
                    )?;
                    continue;
                }
                writeln!(
                    out,
                    "| {n} | {} | {} | {}{} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {ratio} |",
                    v.label,
                    f.label(),
                    ok.len(),
                    if lost > 0 {
                        format!(" (+{lost} without failover)")
                    } else {
                        String::new()
                    },
                    ms(ok[0]),
                    ms(pct(&ok, 50.0)),
                    ms(pct(&ok, 90.0)),
                    ms(pct(&ok, 99.0)),
                    ms(ok[ok.len() - 1]),
                )?;
            }
        }
    }
    println!("\n{out}");
    md.push_str(&out);
    md.push('\n');
    Ok(())
}

/// Waits until the VIP has been answered by one node without a gap for `quiet`.
fn settle(lab: &VipLab, p: &UdpProber, quiet: Duration) -> Result<()> {
    lab.wait_settled(p, quiet).map(|_| ())
}

/// One trial: wait a random phase, pick the announcer, inject, measure, repair, settle.
/// `None`: the last reply before the failure came from another node (the announcer moved
/// between picking and failing it); the trial does not count.
fn trial(
    lab: &mut VipLab,
    p: &UdpProber,
    v: &Variant,
    f: Failure,
) -> Result<Option<Option<Duration>>> {
    // Random phase: 0.5–1.5 s, from the clock's low bits (no RNG dependency needed).
    let jitter = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % 1000) as u64;
    std::thread::sleep(Duration::from_millis(500 + jitter));
    // The announcer is whoever answered the last probe, read right before the failure.
    let a = lab.wait_announcer(p, Duration::from_secs(5))?;
    let others: Vec<String> = (0..lab.nodes.len())
        .filter(|i| *i != a)
        .map(|i| lab.name(i))
        .collect();
    let tags: Vec<&str> = others.iter().map(String::as_str).collect();
    let t0 = epoch();
    match f {
        // The process dies and the node's service stops at the same instant; the address is
        // removed right after (`ip addr del` takes milliseconds, during which the node would
        // otherwise still serve, and removing it first makes keepalived give up gracefully).
        Failure::A => lab.crash(a),
        Failure::A2 => lab.kill(a),
        Failure::B => lab.link(a, false)?,
        Failure::C => {
            lab.freeze(a, true)?;
            lab.link(a, false)?;
        }
    }
    let limit = if v.berth {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(15)
    };
    let got = p.wait_reply(t0, &tags, limit);
    if got.is_none() {
        eprintln!(
            "bench l2: {} {}: no failover from n{} within {limit:?}",
            v.name,
            f.label(),
            a + 1
        );
        for i in 0..lab.nodes.len() {
            let log = lab.log(i);
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            eprintln!("  n{} holds VIP: {}; log tail:", i + 1, lab.holds_vip(i));
            for l in tail.iter().rev() {
                eprintln!("    {l}");
            }
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    let before = p
        .replies()
        .into_iter()
        .rev()
        .find(|r| r.received <= t0)
        .map(|r| r.tag);
    let valid = before.as_deref() == Some(lab.name(a).as_str());
    if std::env::var_os("BENCH_L2_DEBUG").is_some() {
        for r in p
            .replies()
            .iter()
            .filter(|r| r.received > t0 - 0.01 && r.received < t0 + 0.1)
        {
            eprintln!(
                "  reply seq {} sent {:+.1} ms recv {:+.1} ms from {}",
                r.seq,
                (r.sent - t0) * 1e3,
                (r.received - t0) * 1e3,
                r.tag
            );
        }
    }
    let outage = got
        .as_ref()
        .and_then(|_| p.outage_after(t0 - 0.05))
        .map(|o| o.duration());
    // (a') leaves the old node accepting traffic on lo: its echo may keep answering until the
    // successor's GARP, so the outage there can be (near) zero.
    let outage = match (f, got.is_some(), outage) {
        (Failure::A2, true, None) => Some(Duration::ZERO),
        (_, _, o) => o,
    };
    // Repair.
    match f {
        Failure::A | Failure::A2 => {
            lab.start(a, &v.announcer, false)?;
            lab.mute(a, false);
        }
        Failure::B => lab.link(a, true)?,
        Failure::C => {
            lab.link(a, true)?;
            lab.freeze(a, false)?;
        }
    }
    // Let the repaired node rejoin (Berth: `rejoin`, keepalived: preemption) and settle.
    std::thread::sleep(v.repair);
    settle(lab, p, Duration::from_secs(1))?;
    Ok(valid.then_some(outage))
}

fn partition_table(vs: &[Variant], md: &mut String) -> Result<()> {
    let load0 = loadavg();
    let mut out = String::new();
    writeln!(
        out,
        "L2 partition: the announcer is cut off from the other nodes on the bridge while the client still reaches it. \
         The client broadcasts an ARP request for the VIP every 10 ms for 5 s after the cut; \"answering\" counts the \
         MACs that answered one request (a 5 ms window), from the cut + 1 s on (after every bound). Times are from the \
         moment the cut command (`nft`) returned, when the cut is certainly in force; how long the command took is \
         shown (the cut took effect somewhere within it). Load average {load0}."
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| nodes | announcer | cut | cut command (ms) | old announcer's last answer after the cut (ms) | successor's first answer (ms) | most MACs answering one request after 1 s | MACs answering in the last second |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    let cases: [(usize, bool, &str); 3] = [
        (3, false, "from the other two"),
        (2, true, "from the peer and the witness"),
        (2, false, "from the peer only (both reach the witness)"),
    ];
    for (n, and_gw, cut) in cases {
        for v in vs {
            let mut lab = VipLab::new(n, n == 2)?;
            lab.start_all(&v.announcer, false)?;
            let p = lab.prober(false, Duration::from_millis(2))?;
            lab.wait_announcer(&p, Duration::from_secs(20))?;
            // The announcer once the election has settled (Berth's first announcer hands the
            // address to the rendezvous owner once every member is heard).
            let a = lab.wait_settled(&p, Duration::from_secs(2))?;
            let mut arp = ArpWatch::start(
                &lab.client,
                "eth0",
                LAB_VIP.parse()?,
                Duration::from_millis(10),
            )?;
            let old = lab.mac(a)?;
            arp.wait_answer(&old, Duration::from_secs(5))?;
            // Times are from the moment the cut command returned (the cut is certainly in force
            // then; it runs `nft`, which takes a few ms, more under load).
            let t_cmd = epoch();
            lab.isolate(a, and_gw)?;
            let t0 = epoch();
            let cmd_ms = (t0 - t_cmd) * 1000.0;
            std::thread::sleep(Duration::from_secs(5));
            let end = epoch();
            arp.stop();
            lab.fabric.uncut()?;
            let ans = arp.answers();
            let last_old = ans
                .iter()
                .filter(|x| x.mac == old && x.at >= t_cmd)
                .map(|x| x.at)
                .fold(f64::NAN, f64::max);
            let first_new = ans
                .iter()
                .filter(|x| x.mac != old && x.at >= t_cmd)
                .map(|x| x.at)
                .fold(f64::NAN, f64::min);
            let (most, _) = arp.max_macs_in_window(t0 + 1.0, Duration::from_millis(5));
            let last = arp.macs_between(end - 1.0, end).len();
            let f = |x: f64| {
                if x.is_nan() {
                    "–".to_string()
                } else {
                    format!("{:.0}", (x - t0) * 1000.0)
                }
            };
            let old_txt = if last_old.is_nan() {
                "none".into()
            } else if last_old > end - 0.1 {
                "still answering".into()
            } else {
                f(last_old)
            };
            writeln!(
                out,
                "| {n} | {} | {cut} | {cmd_ms:.0} | {old_txt} | {} | {most} | {last} |",
                v.label,
                f(first_new)
            )?;
            eprintln!("bench l2: partition {n} nodes {cut}, {}: done", v.name);
        }
    }
    println!("\n{out}");
    md.push_str(&out);
    md.push('\n');
    Ok(())
}

fn hog_table(berth: &Path, minutes: f64, interval: Duration, md: &mut String) -> Result<()> {
    let mut out = String::new();
    let load0 = loadavg();
    writeln!(
        out,
        "CPU hog: Berth at its defaults with one busy process per CPU (`sh -c 'while :; do :; done'`) for {minutes} min, \
         the client probing every {} ms. A false failover is any change of the answering node. Load average {load0} at the start.",
        interval.as_millis()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| nodes | minutes | announcer changes | outages > 100 ms | longest gap (ms) | probes answered | load average at the end |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    let v = Announcer::Berth {
        bin: berth.to_path_buf(),
        extra: String::new(),
    };
    for n in [3usize, 2] {
        let mut lab = VipLab::new(n, n == 2)?;
        lab.start_all(&v, false)?;
        let p = lab.prober(false, interval)?;
        lab.wait_announcer(&p, Duration::from_secs(20))?;
        settle(&lab, &p, Duration::from_secs(2))?;
        let hog = CpuHog::start(0)?;
        eprintln!(
            "bench l2: hog pids {:?}, {n} nodes, {minutes} min",
            hog.pids()
        );
        let t0 = epoch();
        std::thread::sleep(Duration::from_secs_f64(minutes * 60.0));
        let end = epoch();
        let load1 = loadavg();
        drop(hog);
        let r: Vec<_> = p
            .replies()
            .into_iter()
            .filter(|x| x.received >= t0 && x.received <= end)
            .collect();
        let changes = r.windows(2).filter(|w| w[0].tag != w[1].tag).count();
        let gaps: Vec<f64> = r
            .windows(2)
            .map(|w| w[1].received - w[0].received)
            .collect();
        let outages = gaps.iter().filter(|g| **g > 0.1).count();
        let longest = gaps.iter().copied().fold(0.0, f64::max);
        let expected = ((end - t0) / interval.as_secs_f64()) as u64;
        writeln!(
            out,
            "| {n} | {minutes} | {changes} | {outages} | {:.0} | {} of {expected} | {load1} |",
            longest * 1000.0,
            r.len()
        )?;
        eprintln!("bench l2: hog {n} nodes: {changes} changes, {outages} outages > 100 ms");
    }
    println!("\n{out}");
    md.push_str(&out);
    md.push('\n');
    Ok(())
}
