//! `cargo xtask bench services`: LoadBalancer Services through a real control plane and a real
//! `berth controller` (release build, as deploy/base/berth.yaml's controller ServiceAccount).
//!
//! What it measures (issue: Service IPs, "Measured"):
//!
//! 1. `--services` (1000) LoadBalancer Services created at once (`kubectl create -f` of one List):
//!    time from the first create until every one has `status.loadBalancer.ingress`, the
//!    per-Service latency (its ADDED watch event to the MODIFIED one carrying the address, from one
//!    watch of the namespace, so both ends are seen by the same client), and the controller's CPU
//!    seconds and peak RSS over the phase.
//! 2. Controller restart holding them: the controller killed (SIGKILL) and started again; the
//!    time from the spawn until it logs `service controller serving` (every watch listed, the
//!    ledger read, every Service planned), and the changes it made: AddressBindings and Claims
//!    whose resourceVersion moved, and Services whose addresses moved (must be 0).
//! 3. The same restart at `--large` (10,000) allocations: Services are added up to that many, then
//!    the restart is measured again. Kube-OVN needs 29 s at 10k (kube-ovn#1498).
//!
//! Only loopback and Unix sockets; every process is a testbed `Daemon` or a waited-for child.

use crate::bench::{cpu_secs, ms, pct};
use crate::release_bins;
use anyhow::{bail, Context, Result};
use berth_testbed::{Daemon, KubeControlPlane};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "sbench";
const USAGE: &str =
    "usage: cargo xtask bench services [--services N] [--large N] [--bins DIR] [--markdown FILE]";

struct Opts {
    services: usize,
    large: usize,
    bins: Option<PathBuf>,
    markdown: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts {
            services: 1000,
            large: 10_000,
            bins: None,
            markdown: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value; {USAGE}"))
            };
            match a.as_str() {
                "--services" => o.services = val()?.parse().context("--services")?,
                "--large" => o.large = val()?.parse().context("--large")?,
                "--bins" => o.bins = Some(PathBuf::from(val()?)),
                "--markdown" => o.markdown = Some(PathBuf::from(val()?)),
                _ => bail!("unknown argument {a}; {USAGE}"),
            }
        }
        Ok(o)
    }
}

/// Entry point of `cargo xtask bench services ...`.
pub fn run(args: &[String]) -> Result<()> {
    bench(Opts::parse(args)?)
}

/// When the watch saw each Service created, and first with an address.
#[derive(Default)]
struct Seen {
    added: HashMap<String, Instant>,
    addressed: HashMap<String, (Instant, Vec<String>)>,
}

fn ingress(obj: &Value) -> Vec<String> {
    obj["status"]["loadBalancer"]["ingress"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["ip"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A watch of the namespace's Services (curl streaming the API's watch), folded into `seen`.
fn watch(cp: &KubeControlPlane, seen: Arc<Mutex<Seen>>) -> Result<std::process::Child> {
    let mut cmd = cp.curl();
    // The harness's curl has a 30 s limit; a watch must outlive the whole run.
    cmd.args(["-N", "--max-time", "3600"])
        .arg(format!(
            "{}/api/v1/namespaces/{NAMESPACE}/services?watch=true&allowWatchBookmarks=false",
            cp.server()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().context("spawning the watch")?;
    let out = child.stdout.take().context("watch stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let now = Instant::now();
            let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let obj = &ev["object"];
            let Some(name) = obj["metadata"]["name"].as_str() else {
                continue;
            };
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            s.added.entry(name.to_string()).or_insert(now);
            let ips = ingress(obj);
            if !ips.is_empty() {
                s.addressed.entry(name.to_string()).or_insert((now, ips));
            }
        }
    });
    Ok(child)
}

/// Create Services `s{from}`..`s{to}`: `kubectl create -f` of Lists of 500, four at once.
fn create_services(cp: &KubeControlPlane, dir: &Path, from: usize, to: usize) -> Result<()> {
    let chunks: Vec<(usize, usize)> = (from..to)
        .step_by(500)
        .map(|a| (a, (a + 500).min(to)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errors: Mutex<Vec<String>> = Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&(a, b)) = chunks.get(i) else { return };
                if let Err(e) = create_chunk(cp, dir, a, b) {
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{e:#}"));
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_default();
    if !errors.is_empty() {
        bail!("creating Services: {}", errors.join("; "));
    }
    Ok(())
}

fn create_chunk(cp: &KubeControlPlane, dir: &Path, from: usize, to: usize) -> Result<()> {
    let items: Vec<Value> = (from..to)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": format!("s{i}"), "namespace": NAMESPACE},
                   "spec": {"type": "LoadBalancer", "selector": {"app": format!("s{i}")},
                            "ports": [{"port": 80, "protocol": "TCP"}]}})
        })
        .collect();
    let file = dir.join(format!("services-{from}-{to}.json"));
    std::fs::write(
        &file,
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?,
    )?;
    let path = file.display().to_string();
    cp.kubectl(&["create", "-f", &path, "-o", "name"])
        .context("kubectl create")?;
    Ok(())
}

fn wait_addressed(seen: &Arc<Mutex<Seen>>, n: usize, within: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        let got = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .addressed
            .len();
        if got >= n {
            return Ok(());
        }
        if t.elapsed() > within {
            bail!("only {got} of {n} Services have an address after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn vm_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn spawn_controller(berth: &Path, kubeconfig: &Path, dir: &Path, id: &str) -> Result<Daemon> {
    let mut cmd = Command::new(berth);
    cmd.args(["controller", "--ledger", "kubernetes", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--id", id])
        .env("POD_NAMESPACE", "berth-system")
        .env("BERTH_LOG", "info");
    let log = dir.join(format!("controller-{id}.log"));
    Daemon::spawn(&format!("controller-{id}"), cmd, Some(&log))
}

/// Wait for `needle` in the controller's log; the time it took from `since`.
fn wait_log(d: &Daemon, needle: &str, since: Instant, within: Duration) -> Result<Duration> {
    loop {
        if plain(&d.log()).contains(needle) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > within {
            bail!(
                "{needle:?} not logged within {within:?}:\n{}",
                d.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A log without ANSI colour sequences.
fn plain(log: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in log.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// Every object of a list path, name → resourceVersion.
fn versions(cp: &KubeControlPlane, path: &str) -> Result<BTreeMap<String, String>> {
    let list = cp.request("GET", path, None)?.ok()?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            Some((
                o["metadata"]["name"].as_str()?.to_string(),
                o["metadata"]["resourceVersion"].as_str()?.to_string(),
            ))
        })
        .collect())
}

fn addresses(cp: &KubeControlPlane) -> Result<BTreeMap<String, Vec<String>>> {
    let list = cp
        .request(
            "GET",
            &format!("/api/v1/namespaces/{NAMESPACE}/services"),
            None,
        )?
        .ok()?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| Some((o["metadata"]["name"].as_str()?.to_string(), ingress(o))))
        .collect())
}

struct Restart {
    held: usize,
    serving: Duration,
    changed_records: usize,
    moved: usize,
    cpu: f64,
    rss_mb: f64,
}

/// Kill the controller, start a new one, measure until it serves; then count what changed.
fn restart(
    cp: &KubeControlPlane,
    berth: &Path,
    kubeconfig: &Path,
    dir: &Path,
    ctl: &mut Daemon,
    id: &str,
) -> Result<Restart> {
    let bindings_path = "/apis/berth.dev/v1alpha1/addressbindings";
    let claims_path = "/apis/berth.dev/v1alpha1/claims";
    let before_b = versions(cp, bindings_path)?;
    let before_c = versions(cp, claims_path)?;
    let before_a = addresses(cp)?;
    ctl.kill();
    let t = Instant::now();
    let mut next = spawn_controller(berth, kubeconfig, dir, id)?;
    // The Lease the killed one held is released by nobody: the new one waits for it to expire.
    // What is measured is from taking the Lease (logged) to serving.
    let lead = wait_log(&next, "leader=true", t, Duration::from_secs(60))?;
    let serving = wait_log(
        &next,
        "service controller serving",
        t,
        Duration::from_secs(120),
    )? - lead;
    // Anything it would change happens in its first pass; give late writes a moment.
    std::thread::sleep(Duration::from_secs(3));
    let after_b = versions(cp, bindings_path)?;
    let after_c = versions(cp, claims_path)?;
    let after_a = addresses(cp)?;
    let changed = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        a.iter().filter(|(k, v)| b.get(*k) != Some(v)).count()
            + b.keys().filter(|k| !a.contains_key(*k)).count()
    };
    let moved = before_a
        .iter()
        .filter(|(k, v)| after_a.get(*k) != Some(v))
        .count();
    let pid = next.pid();
    let r = Restart {
        held: before_b.len(),
        serving,
        changed_records: changed(&before_b, &after_b) + changed(&before_c, &after_c),
        moved,
        cpu: cpu_secs(Some(pid)),
        rss_mb: vm_kb(pid, "VmHWM:") as f64 / 1024.0,
    };
    std::mem::swap(ctl, &mut next);
    drop(next);
    Ok(r)
}

fn bench(o: Opts) -> Result<()> {
    berth_testbed::require_root();
    berth_testbed::require_kube_binaries();
    let bins = match &o.bins {
        Some(b) => b.clone(),
        None => release_bins()?,
    };
    let berth = bins.join("berth");
    let dir = tempfile::tempdir()?;
    let t0 = Instant::now();
    let cp = KubeControlPlane::builder()
        .controller_manager(false)
        .service_cidr("10.96.0.0/16")
        // Every LoadBalancer Service takes a NodePort; the default range holds 2768.
        .apiserver_arg("--service-node-port-range=20000-40000")
        .start()
        .context("starting the control plane")?;
    eprintln!("control plane up in {:.1?}", t0.elapsed());
    crate::bench_kube::install_crds(&cp, &berth)?;
    cp.apply_manifest(
        &crate::root().join("deploy/base/berth.yaml"),
        Some(berth_testbed::RBAC_KINDS),
    )?;
    let kubeconfig = cp.service_account_kubeconfig("berth-system", "berth-controller")?;
    cp.request(
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})),
    )?
    .ok()?;
    cp.request(
        "POST",
        "/apis/berth.dev/v1alpha1/pools",
        Some(&json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Pool",
                     "metadata": {"name": "bench"},
                     "spec": {"use": "service", "subnets": [{"cidr": "198.18.0.0/16"}]}})),
    )?
    .ok()?;
    let mut ctl = spawn_controller(&berth, &kubeconfig, dir.path(), "a")?;
    wait_log(
        &ctl,
        "service controller serving",
        Instant::now(),
        Duration::from_secs(60),
    )?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut watcher = watch(&cp, seen.clone())?;
    std::thread::sleep(Duration::from_millis(500));

    // 1. N Services at once.
    let cpu0 = cpu_secs(Some(ctl.pid()));
    let t = Instant::now();
    create_services(&cp, dir.path(), 0, o.services)?;
    let created = t.elapsed();
    wait_addressed(&seen, o.services, Duration::from_secs(600))?;
    let (total, mut lat) = {
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        let last = s.addressed.values().map(|(t, _)| *t).max().unwrap_or(t);
        let lat: Vec<Duration> = s
            .addressed
            .iter()
            .filter_map(|(n, (at, _))| s.added.get(n).map(|a| at.saturating_duration_since(*a)))
            .collect();
        (last - t, lat)
    };
    lat.sort();
    let cpu = cpu_secs(Some(ctl.pid())) - cpu0;
    let rss = vm_kb(ctl.pid(), "VmHWM:") as f64 / 1024.0;
    let distinct: std::collections::HashSet<Vec<String>> = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .addressed
        .values()
        .map(|(_, a)| a.clone())
        .collect();
    if distinct.len() != o.services {
        bail!(
            "{} distinct addresses for {} Services",
            distinct.len(),
            o.services
        );
    }
    eprintln!(
        "{} Services: created in {:.2} s, all addressed after {:.2} s; per Service p50 {:.0} ms p99 {:.0} ms; controller CPU {cpu:.2} s, RSS {rss:.0} MB",
        o.services,
        created.as_secs_f64(),
        total.as_secs_f64(),
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99))
    );

    // 2. Restart at N.
    let small = restart(&cp, &berth, &kubeconfig, dir.path(), &mut ctl, "b")?;
    eprintln!(
        "restart holding {}: serving {:.0} ms after taking the Lease; {} records changed, {} Services moved",
        small.held,
        ms(small.serving),
        small.changed_records,
        small.moved
    );

    // 3. Up to `large`, then restart again.
    let mut large = None;
    if o.large > o.services {
        let t = Instant::now();
        create_services(&cp, dir.path(), o.services, o.large)?;
        wait_addressed(&seen, o.large, Duration::from_secs(1800))?;
        let filled = t.elapsed();
        eprintln!(
            "{} more Services addressed in {:.1} s",
            o.large - o.services,
            filled.as_secs_f64()
        );
        let r = restart(&cp, &berth, &kubeconfig, dir.path(), &mut ctl, "c")?;
        eprintln!(
            "restart holding {}: serving {:.0} ms after taking the Lease; {} records changed, {} Services moved; CPU {:.2} s, peak RSS {:.0} MB",
            r.held,
            ms(r.serving),
            r.changed_records,
            r.moved,
            r.cpu,
            r.rss_mb
        );
        large = Some((filled, r));
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    drop(ctl);
    let mut md = String::new();
    md.push_str("| measurement | value |\n|---|---|\n");
    md.push_str(&format!(
        "| {} LoadBalancer Services created at once: all addressed | {:.2} s (create took {:.2} s) |\n",
        o.services,
        total.as_secs_f64(),
        created.as_secs_f64()
    ));
    md.push_str(&format!(
        "| per Service, created → address (watch) | p50 {:.0} ms, p99 {:.0} ms |\n",
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99))
    ));
    md.push_str(&format!(
        "| controller over that phase | CPU {cpu:.2} s, peak RSS {rss:.0} MB |\n"
    ));
    for r in std::iter::once(&small).chain(large.as_ref().map(|(_, r)| r)) {
        md.push_str(&format!(
            "| restart holding {} (kill -9, new replica): Lease taken → serving | {:.0} ms; {} records changed, {} Services moved; CPU {:.2} s, peak RSS {:.0} MB |\n",
            r.held,
            ms(r.serving),
            r.changed_records,
            r.moved,
            r.cpu,
            r.rss_mb
        ));
    }
    if let Some((filled, _)) = &large {
        md.push_str(&format!(
            "| {} more Services into a pool holding {} | {:.1} s |\n",
            o.large - o.services,
            o.services,
            filled.as_secs_f64()
        ));
    }
    println!("{md}");
    if let Some(p) = &o.markdown {
        std::fs::File::create(p)?.write_all(md.as_bytes())?;
    }
    Ok(())
}
