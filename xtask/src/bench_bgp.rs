//! `cargo xtask bench bgp`: a LoadBalancer Service created → its route in the router's kernel
//! table, on the lab of real nodes with BIRD 2 on the lab router.
//!
//! The path measured is the whole of Berth's: the Service controller assigns the address
//! (watch, ledger write, `status.loadBalancer`), every node's agent sees the binding (its
//! watch), plans and UPDATEs, BIRD selects and installs the route. Services are created one at
//! a time (each waits for its route), so each figure is one Service's latency, not a queue's.
//! The clock starts before the create request and stops when `ip route` in the router's
//! namespace (polled every 2 ms) first shows the /32, and again when it shows all three next
//! hops. No other implementation publishes this figure (MetalLB's and Calico's documentation
//! give none), so there is no side-by-side peer; the targets are printed instead.

use anyhow::{bail, Context};
use berth_lab::{addr, Deploy, Lab, LabConfig};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::release_bins;

fn post(lab: &Lab, path: &str, body: &Value) -> anyhow::Result<()> {
    let r = lab.request("POST", path, Some(body))?;
    if !(200..300).contains(&r.status) {
        bail!("POST {path}: {} {}", r.status, r.body);
    }
    Ok(())
}

fn quantile(v: &[Duration], q: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

/// Runs the benchmark (`--services N`, default 100; `--bfd-trials N`, default 20; `--burst N`,
/// default 1000).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut services = 100usize;
    let mut burst_n = 1000usize;
    let mut bfd_trials = 20usize;
    let mut i = 0;
    while i < args.len() {
        let v = args
            .get(i + 1)
            .with_context(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--services" => services = v.parse().with_context(|| format!("--services {v}"))?,
            "--burst" => burst_n = v.parse().with_context(|| format!("--burst {v}"))?,
            "--bfd-trials" => {
                bfd_trials = v.parse().with_context(|| format!("--bfd-trials {v}"))?
            }
            other => {
                bail!("bench bgp: unknown option {other} (--services N, --bfd-trials N, --burst N)")
            }
        }
        i += 2;
    }
    if services == 0 || services + burst_n > 2048 {
        bail!("bench bgp: --services at least 1, and --services + --burst at most 2048 (the pool is a /21)");
    }
    let bins = release_bins()?;
    let prefix = berth_testbed::unique_name("bench");
    let cfg = LabConfig {
        state_dir: std::env::temp_dir().join(&prefix),
        prefix,
        nodes: 3,
        bins,
        kube_bin: berth_testbed::kube_bin_dir(),
        detached: false,
        deploy: Deploy::Kustomize(crate::root().join("deploy/overlays/lab")),
        timeout: Duration::from_secs(600),
        keep_on_failure: false,
    };
    let lab = Lab::up(cfg)?;
    let result = measure(&lab, services)
        .and_then(|()| bfd(&lab, bfd_trials))
        .and_then(|()| burst(&lab, burst_n));
    let td = lab.down()?;
    println!("teardown: {} processes killed", td.killed);
    result
}

/// Service `name`'s first `status.loadBalancer` address, read every `poll`; an error when it
/// has none 30 s after `since`.
fn service_address(
    lab: &Lab,
    ns: &str,
    name: &str,
    since: Instant,
    poll: Duration,
) -> anyhow::Result<String> {
    loop {
        let s = lab.request(
            "GET",
            &format!("/api/v1/namespaces/{ns}/services/{name}"),
            None,
        )?;
        if let Some(ip) = s.json()?["status"]["loadBalancer"]["ingress"][0]["ip"].as_str() {
            return Ok(ip.to_string());
        }
        if since.elapsed() > Duration::from_secs(30) {
            bail!("{name}: no address after 30 s");
        }
        std::thread::sleep(poll);
    }
}

fn measure(lab: &Lab, services: usize) -> anyhow::Result<()> {
    lab.configure_router(Some(&lab.router_bgp(None, false)))?;
    let crd = "/apis/berth.dev/v1alpha1";
    post(
        lab,
        &format!("{crd}/bgpconfigurations"),
        &json!({"apiVersion": "berth.dev/v1alpha1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {"myASN": 64513}}),
    )?;
    post(
        lab,
        &format!("{crd}/bgppeers"),
        &json!({"apiVersion": "berth.dev/v1alpha1", "kind": "BGPPeer",
                "metadata": {"name": "router"},
                "spec": {"peerAddress": addr::ROUTER, "peerASN": 64512}}),
    )?;
    post(
        lab,
        &format!("{crd}/pools"),
        &json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Pool",
                "metadata": {"name": "bench-bgp"},
                "spec": {"use": "service", "subnets": [{"cidr": "198.18.40.0/21"}],
                         "announce": "bgp"}}),
    )?;
    let ns = "bench";
    lab.kubectl(&["create", "namespace", ns])?;
    lab.control_plane()
        .wait_default_service_account(ns, Duration::from_secs(60))?;
    // Sessions up everywhere before the clock runs.
    let t = Instant::now();
    loop {
        let p = lab.birdc(&["show", "protocols"])?;
        if p.matches("Established").count() == lab.nodes().len() {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the router's sessions did not come up: {p}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let all: BTreeSet<String> = lab.nodes().iter().map(|n| n.ip().to_string()).collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench bgp: {services} Services, one at a time; load at start {}",
        load.trim()
    );
    let mut first = vec![];
    let mut every = vec![];
    for k in 0..services {
        let name = format!("s{k}");
        let t0 = Instant::now();
        post(
            lab,
            &format!("/api/v1/namespaces/{ns}/services"),
            &json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": ns,
                                 "annotations": {"berth.dev/pool": "bench-bgp"}},
                    "spec": {"type": "LoadBalancer", "selector": {"app": name},
                             "ports": [{"port": 80}]}}),
        )?;
        let ip = service_address(lab, ns, &name, t0, Duration::from_millis(2))?;
        let prefix = format!("{ip}/32");
        let mut seen: Option<Duration> = None;
        loop {
            let h = lab.router_next_hops(&prefix);
            if seen.is_none() && !h.is_empty() {
                seen = Some(t0.elapsed());
            }
            if h == all {
                every.push(t0.elapsed());
                first.push(seen.unwrap_or_else(|| t0.elapsed()));
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("{name} {ip}: next hops {h:?} after 30 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    first.sort();
    every.sort();
    println!(
        "\n| Service created → route in BIRD's kernel table ({services} Services) | p50 | p99 | max | target |\n|---|---:|---:|---:|---|"
    );
    for (what, v) in [
        ("first next hop", &first),
        ("all three next hops (ECMP)", &every),
    ] {
        println!(
            "| {what} | {:.0} ms | {:.0} ms | {:.0} ms | p50 < 100 ms, p99 < 300 ms |",
            quantile(v, 0.5),
            quantile(v, 0.99),
            quantile(v, 1.0)
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load at end {}", load.trim());
    Ok(())
}

/// BFD failover: `trials` times, a node's link is cut (each node in turn) and the time until
/// the router's kernel table no longer has it as a next hop of a Service's address is taken;
/// the link comes back and the route returns before the next. Once with the BGPPeer's BFD at
/// Berth's defaults (300 ms x 3) and once at 50 ms x 3; BIRD asks for 50 ms x 3 both times (the
/// slower side sets the pace).
fn bfd(lab: &Lab, trials: usize) -> anyhow::Result<()> {
    if trials == 0 {
        return Ok(());
    }
    lab.configure_router(Some(&lab.router_bgp(None, true)))?;
    let ns = "bench";
    post(
        lab,
        &format!("/api/v1/namespaces/{ns}/services"),
        &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "bfd", "namespace": ns,
                             "annotations": {"berth.dev/pool": "bench-bgp"}},
                "spec": {"type": "LoadBalancer", "selector": {"app": "bfd"},
                         "ports": [{"port": 80}]}}),
    )?;
    let ip = service_address(lab, ns, "bfd", Instant::now(), Duration::from_millis(20))?;
    let prefix = format!("{ip}/32");
    let all: BTreeSet<String> = lab.nodes().iter().map(|n| n.ip().to_string()).collect();
    let wait_up = |what: &str| -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            let b = lab.birdc(&["show", "bfd", "sessions"]).unwrap_or_default();
            if b.matches(" Up ").count() == all.len() && lab.router_next_hops(&prefix) == all {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(90) {
                bail!("{what}: BFD sessions and next hops not all up after 90 s: {b}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    println!(
        "\n| BFD: node link cut → its next hop gone from BIRD's kernel table ({trials} trials) | p50 | p90 | max | detection time (interval × multiplier) |\n|---|---:|---:|---:|---:|"
    );
    for (label, spec, detect) in [
        ("Berth's default (300 ms × 3)", json!({}), 900),
        (
            "50 ms × 3",
            json!({"minRxMillis": 50, "minTxMillis": 50, "multiplier": 3}),
            150,
        ),
    ] {
        lab.kubectl(&[
            "patch",
            "bgppeer",
            "router",
            "--type=merge",
            "-p",
            &json!({"spec": {"bfd": spec}}).to_string(),
        ])?;
        // The new timers are negotiated on the running BFD sessions (a poll sequence).
        std::thread::sleep(Duration::from_secs(2));
        wait_up(label)?;
        let mut v = vec![];
        for k in 0..trials {
            let node = &lab.nodes()[k % lab.nodes().len()];
            let gone = lab
                .cut_and_time_next_hop_loss(node, &prefix, Duration::from_secs(30))
                .with_context(|| label.to_string())?;
            v.push(gone);
            wait_up(label)?;
        }
        v.sort();
        println!(
            "| {label} | {:.0} ms | {:.0} ms | {:.0} ms | {detect} ms |",
            quantile(&v, 0.5),
            quantile(&v, 0.9),
            quantile(&v, 1.0)
        );
    }
    lab.kubectl(&["delete", "service", "bfd", "-n", ns])?;
    lab.configure_router(Some(&lab.router_bgp(None, false)))?;
    // Gone from the router before the next measurement counts its routes.
    let t = Instant::now();
    while !lab.router_next_hops(&prefix).is_empty() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("{prefix} still at the router 30 s after its Service was deleted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One `berth agent` process: PID, resident KiB (anonymous, file-backed: the binary's pages,
/// shared by every Berth process on the node) and CPU time in clock ticks.
#[derive(Debug, Clone, Copy)]
struct AgentUse {
    pid: u32,
    anon: u64,
    file: u64,
    cpu: u64,
}

/// RSS and CPU time of every `berth agent` process, by PID.
fn agents() -> Vec<AgentUse> {
    let mut out = vec![];
    for (pid, _) in berth_lab::agent_pids() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        // utime and stime: fields 14 and 15, after the command in parentheses.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let cpu = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.push(AgentUse {
            pid,
            anon: kib("RssAnon:"),
            file: kib("RssFile:"),
            cpu,
        });
    }
    out
}

/// Where a burst is (printed every 10 s while it waits): Services with an address, and each
/// agent's planned routes (its `/bgp`), beside the router's count.
fn progress(lab: &Lab, ns: &str, t0: Instant, at_router: usize) {
    let addressed = lab
        .request("GET", &format!("/api/v1/namespaces/{ns}/services"), None)
        .and_then(|r| r.json())
        .map(|v| {
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"].is_string())
                .count()
        })
        .unwrap_or(0);
    let planned: Vec<String> = lab
        .nodes()
        .iter()
        .map(|n| {
            n.exec(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "3",
                    "--noproxy",
                    "*",
                    "http://127.0.0.1:9473/bgp",
                ],
            )
            .ok()
            .and_then(|o| serde_json::from_str::<Value>(&o).ok())
            .and_then(|v| v["routes"].as_array().map(|r| r.len().to_string()))
            .unwrap_or_else(|| "?".into())
        })
        .collect();
    println!(
        "  {:>5.1} s: {addressed} Services addressed; agents plan {} routes; router has {at_router}",
        t0.elapsed().as_secs_f64(),
        planned.join("/")
    );
}

/// `n` LoadBalancer Services created at once (four `kubectl create` of Lists): the time until
/// BIRD has every one of their /32s through all three nodes, and each agent's RSS and CPU.
fn burst(lab: &Lab, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let ns = "burst";
    lab.kubectl(&["create", "namespace", ns])?;
    lab.control_plane()
        .wait_default_service_account(ns, Duration::from_secs(60))?;
    let before = agents();
    // Four Lists created concurrently (one `kubectl create` of a List is serial).
    let mut files = vec![];
    for part in 0..4 {
        let items: Vec<Value> = (0..n)
            .filter(|k| k % 4 == part)
            .map(|k| {
                json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": format!("b{k}"), "namespace": ns,
                                    "annotations": {"berth.dev/pool": "bench-bgp"}},
                       "spec": {"type": "LoadBalancer", "selector": {"app": "none"},
                                "ports": [{"port": 80}]}})
            })
            .collect();
        files.push(crate::list_file(items)?);
    }
    // Every /32 of the pool with three next hops, counted from the router's table.
    let count = || -> usize {
        let v = lab
            .netns("router")
            .ip_json(["route", "show", "proto", "bird"])
            .unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["dst"]
                    .as_str()
                    .and_then(|d| d.parse::<std::net::Ipv4Addr>().ok())
                    .is_some_and(|a| {
                        a.octets()[..2] == [198, 18] && (40..48).contains(&a.octets()[2])
                    })
                    && r["nexthops"].as_array().is_some_and(|h| h.len() == 3)
            })
            .count()
    };
    // What the router has before (the earlier Services' routes).
    let previous = count();
    let t0 = Instant::now();
    let results: Vec<anyhow::Result<String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = files
            .iter()
            .map(|f| {
                let path = f.path().display().to_string();
                sc.spawn(move || lab.kubectl(&["create", "-f", &path, "-o", "name"]))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("kubectl thread panicked")))
            })
            .collect()
    });
    for r in results {
        r.context("creating the burst's Services")?;
    }
    let created = t0.elapsed();
    let want = previous + n;
    let mut last = 0;
    let mut told = Instant::now();
    while last < want {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("only {last} of {want} routes with three next hops after 600 s");
        }
        std::thread::sleep(Duration::from_millis(50));
        last = count();
        if told.elapsed() > Duration::from_secs(10) {
            told = Instant::now();
            progress(lab, ns, t0, last);
        }
    }
    let all = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after = agents();
    let hz = 100.0;
    println!(
        "\n| {n} Services created at once (4 concurrent kubectl create) | created | all in BIRD's kernel table via 3 next hops | after the last was created |\n|---|---:|---:|---:|\n| Berth | {:.1} s | {:.1} s | {:.2} s |",
        created.as_secs_f64(),
        all.as_secs_f64(),
        all.saturating_sub(created).as_secs_f64()
    );
    println!(
        "\n| agent (pid) | RSS before | RSS after | of which anonymous (heap) | of which the binary's pages (shared) | CPU during the burst |\n|---|---:|---:|---:|---:|---:|"
    );
    let mib = |k: u64| k as f64 / 1024.0;
    for a in &after {
        let b = before
            .iter()
            .find(|b| b.pid == a.pid)
            .copied()
            .unwrap_or(AgentUse {
                pid: a.pid,
                anon: 0,
                file: 0,
                cpu: 0,
            });
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} s |",
            a.pid,
            mib(b.anon + b.file),
            mib(a.anon + a.file),
            mib(a.anon),
            mib(a.file),
            a.cpu.saturating_sub(b.cpu) as f64 / hz
        );
    }
    println!("(target: RSS < 20 MiB per agent; kube-vip 5-71 MiB, MetalLB's limit 100 MiB, Cilium 438 MiB)");
    Ok(())
}
