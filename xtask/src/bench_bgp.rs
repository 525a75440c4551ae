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

/// Runs the benchmark (`--services N`, default 100).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut services = 100usize;
    let mut i = 0;
    while i < args.len() {
        let v = args
            .get(i + 1)
            .with_context(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--services" => services = v.parse().with_context(|| format!("--services {v}"))?,
            other => bail!("bench bgp: unknown option {other} (--services N)"),
        }
        i += 2;
    }
    if services == 0 || services > 250 {
        bail!("bench bgp: --services between 1 and 250 (the pool is a /24)");
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
    let result = measure(&lab, services);
    let td = lab.down()?;
    println!("teardown: {} processes killed", td.killed);
    result
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
                "spec": {"use": "service", "subnets": [{"cidr": "198.18.40.0/24"}],
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
        let ip = loop {
            let s = lab.request(
                "GET",
                &format!("/api/v1/namespaces/{ns}/services/{name}"),
                None,
            )?;
            if let Some(ip) = s.json()?["status"]["loadBalancer"]["ingress"][0]["ip"].as_str() {
                break ip.to_string();
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("{name}: no address after 30 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
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
