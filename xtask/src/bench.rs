//! `cargo xtask bench ipam`: IPAM-only ADD+DEL latency and throughput, each operation executed as
//! a plugin process exactly as a container runtime does, side by side with Debian's `host-local`
//! in the same run.
//!
//! Variants (all on the same /16, same number of operations, state in fresh temp dirs):
//! - `host-local`: `/usr/lib/cni/host-local`, `dataDir` in a temp dir (never /var/lib/cni);
//! - `berth direct/embedded`: `berth-ipam` with no agent listening, embedded ledger;
//! - `berth agent/embedded`: `berth-ipam` forwarding to `berth agent --ledger embedded:DIR`;
//! - `berth agent/etcd`: `berth-ipam` forwarding to `berth agent --ledger etcd:URL`, a real
//!   Debian etcd 3.4 (fsync on, default settings) on free loopback ports;
//! - `berth direct/etcd`: `berth-ipam` with no agent, straight to the same etcd (other node name).
//!
//! Each cell (variant x concurrency) runs `--ops` ADD+DEL pairs: N worker threads each exec ADD
//! then DEL for distinct container IDs. ADD and DEL latencies are spawn-to-exit wall times;
//! throughput is pairs per second of the cell's wall time. Every configuration is run `--runs`
//! times and the table shows medians over runs; within a run the variants take turns in chunks
//! of `--chunk` pairs, so every variant sees the same background load (the machine is shared).
//! CPU per pair (plugin processes + agent + etcd, from /proc) is reported too: unlike latency it
//! hardly depends on other load.

use crate::release_bins;
use anyhow::{bail, Context, Result};
use berth_testbed::{Daemon, EtcdCluster, DEBIAN_CNI_DIR};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SUBNET: &str = "198.18.0.0/16";
const NETWORK: &str = "benchnet";
const USAGE: &str =
    "usage: cargo xtask bench ipam [--ops N] [--runs R] [--conc 1,8] [--warmup W] [--chunk C] \
[--bins DIR] [--direct-etcd] [--etcd-arg ARG]... [--only NAME[,NAME...]] [--markdown FILE]";

/// Run a benchmark by name.
pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("ipam") => ipam(Opts::parse(&args[1..])?),
        _ => bail!("{USAGE}"),
    }
}

struct Opts {
    ops: usize,
    runs: usize,
    conc: Vec<usize>,
    warmup: usize,
    chunk: usize,
    bins: Option<PathBuf>,
    direct_etcd: bool,
    etcd_args: Vec<String>,
    only: Option<Vec<String>>,
    markdown: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts {
            ops: 400,
            runs: 3,
            conc: vec![1, 8],
            warmup: 8,
            chunk: 100,
            bins: None,
            direct_etcd: false,
            etcd_args: vec![],
            only: None,
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
                "--ops" => o.ops = val()?.parse().context("--ops")?,
                "--runs" => o.runs = val()?.parse().context("--runs")?,
                "--warmup" => o.warmup = val()?.parse().context("--warmup")?,
                "--chunk" => o.chunk = val()?.parse().context("--chunk")?,
                "--conc" => {
                    o.conc = val()?
                        .split(',')
                        .map(|s| s.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .context("--conc")?
                }
                "--bins" => o.bins = Some(PathBuf::from(val()?)),
                "--direct-etcd" => o.direct_etcd = true,
                "--etcd-arg" => o.etcd_args.push(val()?),
                "--only" => o.only = Some(val()?.split(',').map(str::to_string).collect()),
                "--markdown" => o.markdown = Some(PathBuf::from(val()?)),
                _ => bail!("unknown option {a:?}; {USAGE}"),
            }
        }
        if o.ops == 0 || o.runs == 0 || o.chunk == 0 || o.conc.is_empty() || o.conc.contains(&0) {
            bail!("--ops, --runs and every --conc value must be at least 1");
        }
        Ok(o)
    }
}

/// One benchmarked plugin setup.
struct Variant {
    name: &'static str,
    plugin: PathBuf,
    ipam: Value,
    /// The agent serving this variant, checked alive around every cell (a dead agent would make
    /// the plugin silently fall back to the direct path).
    agent: Option<Daemon>,
    /// Server processes whose CPU time counts towards this variant (agent, etcd).
    servers: Vec<u32>,
    /// What each of `servers` is, for the CPU split.
    server_names: Vec<&'static str>,
}

impl Variant {
    fn config(&self) -> Vec<u8> {
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "macvlan",
            "master": "eth0",
            "ipam": self.ipam,
        });
        serde_json::to_vec(&conf).expect("JSON")
    }
}

#[derive(Default)]
struct Cell {
    add: Vec<Duration>,
    del: Vec<Duration>,
    wall: Duration,
    /// CPU seconds used by the plugin processes first, then by each server in `Variant::servers`
    /// order.
    parts: Vec<f64>,
}

impl Cell {
    fn merge(&mut self, o: Cell) {
        self.add.extend(o.add);
        self.del.extend(o.del);
        self.wall += o.wall;
        self.parts.resize(self.parts.len().max(o.parts.len()), 0.0);
        for (a, b) in self.parts.iter_mut().zip(o.parts) {
            *a += b;
        }
    }

    fn finish(&mut self) {
        self.add.sort();
        self.del.sort();
    }

    fn cpu_ms_per_pair(&self) -> f64 {
        self.parts.iter().sum::<f64>() * 1000.0 / self.add.len() as f64
    }

    /// "plugins 1.20 + agent 0.40 + etcd 0.90": where a pair's CPU went, in ms.
    fn cpu_split(&self, names: &[&str]) -> String {
        let n = self.add.len().max(1) as f64;
        self.parts
            .iter()
            .zip(std::iter::once(&"plugins").chain(names))
            .map(|(c, name)| format!("{name} {:.2}", c * 1000.0 / n))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    fn pairs_per_s(&self) -> f64 {
        self.add.len() as f64 / self.wall.as_secs_f64()
    }
}

fn exec(plugin: &Path, command: &str, id: &str, config: &[u8]) -> Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/var/run/netns/berth-bench")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", DEBIAN_CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", plugin.display()))?;
    // Write and close stdin; a plugin that exits early would give EPIPE, reported below.
    let wrote = child.stdin.take().map(|mut s| s.write_all(config));
    let out = child.wait_with_output()?;
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = out.status.success()
        && match command {
            "ADD" => serde_json::from_str::<Value>(&stdout)
                .ok()
                .and_then(|v| {
                    v.get("ips")
                        .and_then(Value::as_array)
                        .map(|a| !a.is_empty())
                })
                .unwrap_or(false),
            _ => stdout.trim().is_empty(),
        };
    if !ok || matches!(wrote, Some(Err(_))) {
        bail!(
            "{} {command} {id} failed ({}): stdout {stdout:?} stderr {:?}",
            plugin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

/// CPU seconds (user + system) from `/proc/PID/stat`; for `self`, those of waited-for children.
pub(crate) fn cpu_secs(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime is field 14, cutime 16 (1-based).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let (a, b) = if pid.is_some() { (11, 12) } else { (13, 14) };
    (f.get(a).unwrap_or(&0.0) + f.get(b).unwrap_or(&0.0)) / 100.0
}

/// CPU seconds of this process's waited-for children (the plugin processes), then of each server.
fn cpu_of(servers: &[u32]) -> Vec<f64> {
    std::iter::once(cpu_secs(None))
        .chain(servers.iter().map(|&p| cpu_secs(Some(p))))
        .collect()
}

/// `ops` ADD+DEL pairs on `conc` worker threads.
fn cell(v: &Variant, conc: usize, ops: usize, tag: &str) -> Result<Cell> {
    let config = v.config();
    let next = AtomicUsize::new(0);
    let cpu0 = cpu_of(&v.servers);
    let start = Instant::now();
    let results: Vec<Result<(Vec<Duration>, Vec<Duration>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..conc)
            .map(|_| {
                s.spawn(|| {
                    let (mut add, mut del) = (vec![], vec![]);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= ops {
                            break;
                        }
                        let id = format!("bench-{tag}-{i:05}");
                        add.push(exec(&v.plugin, "ADD", &id, &config)?);
                        del.push(exec(&v.plugin, "DEL", &id, &config)?);
                    }
                    Ok((add, del))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench worker panicked"))
            .collect()
    });
    let wall = start.elapsed();
    let parts: Vec<f64> = cpu_of(&v.servers)
        .iter()
        .zip(&cpu0)
        .map(|(a, b)| a - b)
        .collect();
    let mut c = Cell {
        wall,
        parts,
        ..Cell::default()
    };
    for r in results {
        let (a, d) = r?;
        c.add.extend(a);
        c.del.extend(d);
    }
    Ok(c)
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn wait_socket(agent: &mut Daemon, socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if !agent.is_running() || Instant::now() > deadline {
            bail!(
                "berth agent did not serve {}; log:\n{}",
                socket.display(),
                agent.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_agent(berth: &Path, dir: &Path, name: &str, ledger: &str) -> Result<(Daemon, PathBuf)> {
    let socket = dir.join(format!("{name}.sock"));
    let mut cmd = Command::new(berth);
    cmd.args(["agent", "--socket"])
        .arg(&socket)
        .args(["--ledger", ledger, "--node", &format!("bench-{name}")])
        .env("RUST_LOG", "warn");
    let mut d = Daemon::spawn(
        &format!("bench-{name}"),
        cmd,
        Some(&dir.join(format!("{name}.log"))),
    )?;
    wait_socket(&mut d, &socket)?;
    Ok((d, socket))
}

/// Per-cell summary: medians over runs.
struct Row {
    variant: &'static str,
    conc: usize,
    add_p50: f64,
    add_p99: f64,
    del_p50: f64,
    del_p99: f64,
    pps: f64,
    pps_min: f64,
    pps_max: f64,
    cpu: f64,
}

fn ipam(o: Opts) -> Result<()> {
    let host_local = Path::new(DEBIAN_CNI_DIR).join("host-local");
    if !host_local.exists() {
        bail!(
            "{} is missing: apt-get install containernetworking-plugins",
            host_local.display()
        );
    }
    let bins = match &o.bins {
        Some(b) => b.clone(),
        None => release_bins()?,
    };
    let (berth, ipam_bin) = (bins.join("berth"), bins.join("berth-ipam"));
    for b in [&berth, &ipam_bin] {
        if !b.exists() {
            bail!("{} is missing", b.display());
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir()
        .context("creating the bench temp dir")?;
    let dir = tmp.path();
    let nobody = dir.join("no-agent.sock");
    let range = json!([[{"subnet": SUBNET}]]);
    let want = |name: &str| o.only.as_ref().is_none_or(|l| l.iter().any(|x| x == name));

    let mut variants = vec![Variant {
        name: "host-local",
        plugin: host_local.clone(),
        ipam: json!({"type": "host-local", "dataDir": dir.join("host-local"), "ranges": range}),
        agent: None,
        servers: vec![],
        server_names: vec![],
    }];
    if want("direct/embedded") {
        variants.push(Variant {
            name: "direct/embedded",
            plugin: ipam_bin.clone(),
            ipam: json!({"type": "berth-ipam", "ledger": "embedded", "dataDir": dir.join("direct-embedded"),
                         "agentSocket": nobody, "nodeName": "bench-direct", "ranges": range}),
            agent: None,
            servers: vec![],
            server_names: vec![],
        });
    }
    if want("agent/embedded") {
        let data = dir.join("agent-embedded");
        let (d, socket) = start_agent(
            &berth,
            dir,
            "agent-embedded",
            &format!("embedded:{}", data.display()),
        )?;
        variants.push(Variant {
            name: "agent/embedded",
            plugin: ipam_bin.clone(),
            // The same dataDir as the agent: if the agent died, the direct fallback would wait on
            // the agent's ledger lock and fail instead of silently measuring the direct path.
            ipam: json!({"type": "berth-ipam", "ledger": "embedded", "dataDir": data, "agentSocket": socket,
                         "nodeName": "bench-agent-embedded", "ranges": range}),
            servers: vec![d.pid()],
            server_names: vec!["agent"],
            agent: Some(d),
        });
    }
    let need_etcd = want("agent/etcd") || (o.direct_etcd && want("direct/etcd"));
    let etcd = if need_etcd {
        let mut b = EtcdCluster::builder().members(1);
        for a in &o.etcd_args {
            b = b.arg(a.clone());
        }
        let e = b.start().context("starting etcd")?;
        eprintln!("etcd {} healthy in {:?}", e.client_url(0), e.startup_time());
        Some(e)
    } else {
        None
    };
    if let Some(e) = &etcd {
        let url = e.client_url(0);
        let etcd_pid = e.member_pid(0).context("etcd member pid")?;
        if want("agent/etcd") {
            let (d, socket) = start_agent(&berth, dir, "agent-etcd", &format!("etcd:{url}"))?;
            variants.push(Variant {
                name: "agent/etcd",
                plugin: ipam_bin.clone(),
                ipam: json!({"type": "berth-ipam", "etcdConfig": {"etcdURL": url},
                             "agentSocket": socket, "nodeName": "bench-agent-etcd",
                             "ranges": range}),
                servers: vec![d.pid(), etcd_pid],
                server_names: vec!["agent", "etcd"],
                agent: Some(d),
            });
        }
        if o.direct_etcd && want("direct/etcd") {
            variants.push(Variant {
                name: "direct/etcd",
                plugin: ipam_bin.clone(),
                ipam: json!({"type": "berth-ipam", "etcdConfig": {"etcdURL": url},
                             "agentSocket": nobody, "nodeName": "bench-direct-etcd",
                             "ranges": range}),
                agent: None,
                servers: vec![etcd_pid],
                server_names: vec!["etcd"],
            });
        }
    }

    eprintln!(
        "bench ipam: {} pairs per cell, concurrency {:?}, {} runs (interleaved), warm-up {} pairs; \
         variants: {}",
        o.ops,
        o.conc,
        o.runs,
        o.warmup,
        variants.iter().map(|v| v.name).collect::<Vec<_>>().join(", ")
    );
    // cells[variant][conc] = one Cell per run
    let mut cells: Vec<Vec<Vec<Cell>>> = variants
        .iter()
        .map(|_| o.conc.iter().map(|_| vec![]).collect())
        .collect();
    for run in 0..o.runs {
        for (ci, &conc) in o.conc.iter().enumerate() {
            let mut acc: Vec<Cell> = variants.iter().map(|_| Cell::default()).collect();
            for v in variants.iter() {
                cell(v, conc, o.warmup.max(conc), &format!("r{run}c{conc}w"))
                    .with_context(|| format!("{} warm-up", v.name))?;
            }
            // Chunks of every variant take turns (starting variant rotating), so all variants
            // see the same background load over time.
            let chunks = o.ops.div_ceil(o.chunk);
            for k in 0..chunks {
                let n = o.chunk.min(o.ops - k * o.chunk);
                for j in 0..variants.len() {
                    let vi = (j + k) % variants.len();
                    let v = &variants[vi];
                    let c = cell(v, conc, n, &format!("r{run}c{conc}k{k}"))
                        .with_context(|| format!("{} at concurrency {conc}", v.name))?;
                    acc[vi].merge(c);
                }
            }
            for (vi, (v, mut c)) in variants.iter_mut().zip(acc).enumerate() {
                if let Some(a) = v.agent.as_mut() {
                    if !a.is_running() {
                        bail!("the {} agent died; log:\n{}", v.name, a.log_tail(30));
                    }
                }
                c.finish();
                eprintln!(
                    "run {}/{} c={conc:<2} {:<16} ADD p50 {:6.2} p99 {:6.2}  DEL p50 {:6.2} p99 {:6.2} ms  {:7.1} pairs/s  {:5.2} CPU ms/pair ({})",
                    run + 1,
                    o.runs,
                    v.name,
                    ms(pct(&c.add, 50.0)),
                    ms(pct(&c.add, 99.0)),
                    ms(pct(&c.del, 50.0)),
                    ms(pct(&c.del, 99.0)),
                    c.pairs_per_s(),
                    c.cpu_ms_per_pair(),
                    c.cpu_split(&v.server_names),
                );
                cells[vi][ci].push(c);
            }
        }
    }

    let mut rows = vec![];
    for (ci, &conc) in o.conc.iter().enumerate() {
        for (vi, v) in variants.iter().enumerate() {
            let cs = &cells[vi][ci];
            let m = |f: &dyn Fn(&Cell) -> f64| median(cs.iter().map(f).collect());
            let pps: Vec<f64> = cs.iter().map(Cell::pairs_per_s).collect();
            rows.push(Row {
                variant: v.name,
                conc,
                add_p50: m(&|c| ms(pct(&c.add, 50.0))),
                add_p99: m(&|c| ms(pct(&c.add, 99.0))),
                del_p50: m(&|c| ms(pct(&c.del, 50.0))),
                del_p99: m(&|c| ms(pct(&c.del, 99.0))),
                pps: median(pps.clone()),
                pps_min: pps.iter().copied().fold(f64::INFINITY, f64::min),
                pps_max: pps.iter().copied().fold(0.0, f64::max),
                cpu: m(&Cell::cpu_ms_per_pair),
            });
        }
    }
    let base = |conc: usize| {
        rows.iter()
            .find(|r| r.variant == "host-local" && r.conc == conc)
    };

    let mut out = String::new();
    let ipam_size = std::fs::metadata(&ipam_bin).map(|m| m.len()).unwrap_or(0);
    out.push_str(&format!(
        "IPAM-only ADD+DEL, one plugin process per operation (as a runtime runs it), {} pairs per \
         cell, {} subnet. Medians over {} runs; within a run the variants take turns in chunks of \
         {} pairs, so all see the same background load (shared 2-core machine: single runs are \
         noisy). Latencies in ms, spawn to exit. CPU ms/pair: user+system CPU of the plugin \
         processes plus the agent and etcd serving them, per ADD+DEL pair. Ratios are to \
         host-local at the same concurrency (p99 ×: lower is better; pairs/s ×: higher is better).\n\
         host-local: Debian containernetworking-plugins ({}); berth-ipam: release build ({}, {:.1} MB); \
         etcd: Debian 3.4, one member on 127.0.0.1, fsync on{}.\n\n",
        o.ops,
        SUBNET,
        o.runs,
        o.chunk,
        host_local.display(),
        elf_linkage(&ipam_bin),
        ipam_size as f64 / 1e6,
        if o.etcd_args.is_empty() {
            String::new()
        } else {
            format!(", extra flags {:?}", o.etcd_args)
        }
    ));
    out.push_str(
        "| variant | conc | ADD p50 | ADD p99 | DEL p50 | DEL p99 | pairs/s (min–max) | CPU ms/pair | ADD p99 × | DEL p99 × | pairs/s × |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let b = base(r.conc);
        let ratio =
            |x: f64, y: Option<f64>| y.map_or("–".to_string(), |y| format!("{:.2}", x / y));
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} ({:.0}–{:.0}) | {:.2} | {} | {} | {} |\n",
            r.variant,
            r.conc,
            r.add_p50,
            r.add_p99,
            r.del_p50,
            r.del_p99,
            r.pps,
            r.pps_min,
            r.pps_max,
            r.cpu,
            ratio(r.add_p99, b.map(|b| b.add_p99)),
            ratio(r.del_p99, b.map(|b| b.del_p99)),
            ratio(r.pps, b.map(|b| b.pps)),
        ));
    }
    out.push('\n');
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    for &conc in &o.conc {
        if let (Some(b), Some(r)) = (
            base(conc),
            rows.iter()
                .find(|r| r.variant == "agent/etcd" && r.conc == conc),
        ) {
            let (a, d) = (r.add_p99 / b.add_p99, r.del_p99 / b.del_p99);
            out.push_str(&format!(
                "- {}: agent/etcd p99 ≤ 1.5× host-local at concurrency {conc}: ADD {a:.2}×, DEL {d:.2}×\n",
                verdict(a <= 1.5 && d <= 1.5)
            ));
        }
    }
    if let Some(b) = base(8) {
        for r in rows
            .iter()
            .filter(|r| r.conc == 8 && r.variant != "host-local")
        {
            let x = r.pps / b.pps;
            let headline = if r.variant == "agent/etcd" {
                ""
            } else {
                " (informative)"
            };
            out.push_str(&format!(
                "- {}: {} throughput ≥ 2× host-local at concurrency 8: {x:.2}×{headline}\n",
                verdict(x >= 2.0),
                r.variant
            ));
        }
    }
    println!("\n{out}");
    if let Some(p) = &o.markdown {
        std::fs::write(p, &out).with_context(|| format!("writing {}", p.display()))?;
    }
    // Agents (Daemon) and etcd are stopped on drop, then the temp dir is removed.
    for v in &mut variants {
        if let Some(a) = v.agent.as_mut() {
            a.terminate(Duration::from_secs(5));
        }
    }
    drop(variants);
    drop(etcd);
    drop(tmp);
    Ok(())
}

/// How an ELF executable is linked: "dynamic" (has an interpreter), "static-pie" or "static
/// non-PIE".
fn elf_linkage(path: &Path) -> &'static str {
    let Ok(b) = std::fs::read(path) else {
        return "unreadable";
    };
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()) as usize)
    };
    // ELF64 little-endian only (what this benchmark builds); e_type, e_phoff, e_phentsize, e_phnum.
    if b.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return "not ELF64";
    }
    let (Some(ty), Some(phoff), Some(phentsize), Some(phnum)) =
        (u16_at(0x10), u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return "not ELF64";
    };
    const PT_INTERP: u32 = 3;
    let interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .is_some_and(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) == PT_INTERP)
    });
    match (interp, ty) {
        (true, _) => "dynamic",
        (false, 3) => "static-pie",
        (false, _) => "static non-PIE",
    }
}
