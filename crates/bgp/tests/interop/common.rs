//! The interop lab, built on `berth-testbed`: namespaces on a fabric
//! (`Netns`, `Fabric`), daemons as `Daemon`s (own session, recorded PID,
//! killed on Drop and when the test process dies), BIRD, FRR and gobgpd from
//! `berth_testbed::{Bird, Frr, Gobgpd}`, and the root and tool checks up
//! front. What stays here is BGP-test specific: the Berth speaker process,
//! the routers' configuration templates, the timing lock and log parsers.
//!
//! Addresses: 198.18.0.0/24 and 2001:db8::/64 on the shared link, routes from
//! 198.19.0.0/16 and 2001:db8:100::/48.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use berth_testbed::{require_root, require_tools, unique_name, BGP_TOOLS};
pub use berth_testbed::{Bird, Daemon, Fabric, Frr, Gobgpd, Netns};

/// Timing-sensitive tests take this exclusively; the others share it, so a
/// failover measurement never competes with five other labs for two cores.
static TIMING: RwLock<()> = RwLock::new(());

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// The speaker binary Cargo builds for these tests (the code of `berth bgp`).
pub const BERTH: &str = env!("CARGO_BIN_EXE_berth-bgp");

/// Polls `f` every 10 ms until it returns true; returns the time it took.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    berth_testbed::wait_for(what, limit, Duration::from_millis(10), || f().then_some(()))
        .unwrap_or_else(|e| panic!("{e}"));
    t.elapsed()
}

/// A namespace on the lab's link.
pub struct Node {
    /// Namespace name.
    pub ns: String,
    pub v4: String,
    pub v6: String,
    /// Veth end in the fabric namespace.
    pub port: String,
}

/// A running Berth speaker (`berth-bgp --config`).
pub struct Berth {
    pub daemon: Daemon,
}

impl Berth {
    pub fn signal(&mut self, sig: i32) {
        self.daemon.signal(sig).expect("signalling the speaker");
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}

pub struct Lab {
    /// Helper processes (tcpdump, `ip monitor`), killed before the namespaces go.
    helpers: Vec<Daemon>,
    namespaces: Vec<Netns>,
    pub fabric: Fabric,
    pub dir: PathBuf,
    logs: Vec<(String, PathBuf)>,
    _guard: Guard,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let g = Guard::Shared(TIMING.read().unwrap_or_else(|e| e.into_inner()));
        Lab::with_guard(tag, g)
    }

    /// A lab that runs alone (for timing measurements).
    pub fn new_exclusive(tag: &str) -> Lab {
        let g = Guard::Exclusive(TIMING.write().unwrap_or_else(|e| e.into_inner()));
        Lab::with_guard(tag, g)
    }

    fn with_guard(tag: &str, guard: Guard) -> Lab {
        require_root();
        require_tools(BGP_TOOLS);
        // Named like every testbed leftover, so a killed run's dir is swept.
        let dir = std::env::temp_dir().join(unique_name(&format!("bgp{tag}")));
        fs::create_dir_all(&dir).unwrap();
        // FRR's daemons run as user frr and must reach their directory.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let fabric = Fabric::new(tag).expect("fabric");
        Lab {
            helpers: vec![],
            namespaces: vec![],
            fabric,
            dir,
            logs: vec![],
            _guard: guard,
        }
    }

    /// The namespace called `name` (made by this lab).
    pub fn netns(&self, name: &str) -> &Netns {
        self.namespaces
            .iter()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no namespace {name} in this lab"))
    }

    fn add_ns(&mut self, label: &str) -> String {
        let ns = Netns::new(label).expect("namespace");
        ns.lo_up().unwrap();
        // No DAD: addresses (link-local ones too) are usable at once.
        ns.disable_dad().unwrap();
        let name = ns.name().to_string();
        self.namespaces.push(ns);
        name
    }

    /// A namespace on the shared link with 198.18.0.`host`/24 and 2001:db8::`host`/64.
    pub fn node(&mut self, name: &str, host: u8) -> Node {
        let ns = self.add_ns(name);
        let v4 = format!("198.18.0.{host}");
        let v6 = format!("2001:db8::{host:x}");
        let port = self
            .fabric
            .attach(
                self.netns(&ns),
                "eth0",
                &[&format!("{v4}/24"), &format!("{v6}/64")],
            )
            .unwrap();
        Node { ns, v4, v6, port }
    }

    /// An empty namespace (for routed topologies built with [`Lab::link`]).
    pub fn bare_node(&mut self, name: &str) -> String {
        self.add_ns(name)
    }

    /// A second bridge in the fabric namespace.
    pub fn bridge(&self, name: &str) {
        self.fabric.add_bridge(name).unwrap();
    }

    /// Connects `ns` to `bridge` with interface `ifname` holding `cidr`.
    pub fn link(&mut self, ns: &str, bridge: &str, ifname: &str, cidr: &str) {
        self.fabric
            .attach_to(bridge, self.netns(ns), ifname, &[cidr])
            .unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn daemon(&mut self, ns: &str, name: &str, cmd: &[&str]) -> Daemon {
        let log = self.path(&format!("{name}.log"));
        let mut c = self.netns(ns).command(cmd[0]);
        c.args(&cmd[1..]).env("TZ", "UTC");
        let d = Daemon::spawn(name, c, Some(&log)).expect("spawn");
        self.logs.push((name.to_string(), log));
        d
    }

    /// Starts a helper (tcpdump, `ip monitor`) in `ns`, logging to `NAME.log`;
    /// it runs until the lab is dropped.
    pub fn spawn(&mut self, ns: &str, name: &str, cmd: &[&str]) {
        let d = self.daemon(ns, name, cmd);
        self.helpers.push(d);
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    pub fn kernel_route(&self, ns: &str, prefix: &str) -> String {
        let fam = if prefix.contains(':') { "-6" } else { "-4" };
        self.netns(ns)
            .ip([fam, "route", "show", prefix])
            .unwrap_or_default()
    }

    // ---- Berth ----

    /// Writes a speaker config and starts the speaker.
    pub fn berth(&mut self, node: &Node, name: &str, toml: &str) -> Berth {
        let cfg = self.write(&format!("{name}.toml"), toml);
        let cfg = cfg.to_str().unwrap().to_string();
        Berth {
            daemon: self.daemon(&node.ns, name, &[BERTH, "--config", &cfg]),
        }
    }

    pub fn berth_status(&self, name: &str) -> String {
        fs::read_to_string(self.path(&format!("{name}.status"))).unwrap_or_default()
    }

    // ---- BIRD ----

    /// BIRD with kernel export (ECMP), BFD on eth0 and the `spk` template;
    /// `body` holds the protocols.
    pub fn bird(&mut self, node: &Node, name: &str, body: &str) -> Bird {
        let conf = format!(
            "router id {v4};\n\
             log stderr all;\n\
             protocol device {{ scan time 1; }}\n\
             protocol kernel k4 {{ ipv4 {{ export all; import none; }}; learn off; persist off; merge paths on limit 16; }}\n\
             protocol kernel k6 {{ ipv6 {{ export all; import none; }}; learn off; persist off; merge paths on limit 16; }}\n\
             protocol bfd {{ interface \"eth0\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             template bgp spk {{ local as 64512; hold time 3; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 10; \
             ipv4 {{ import all; export none; }}; ipv6 {{ import all; export none; }}; }}\n{body}\n",
            v4 = node.v4
        );
        let b = Bird::start(self.netns(&node.ns), &self.dir, name, &conf).expect("bird");
        self.logs
            .push((name.into(), self.path(&format!("{name}.log"))));
        b
    }

    // ---- FRR ----

    /// zebra, bfdd and bgpd with all paths under `DIR/NAME/`; bfdd logs its
    /// state changes with microsecond UTC timestamps to `bfdd.dlog` (the
    /// failover test reads FRR's detection time from it).
    pub fn frr(&mut self, node: &Node, name: &str, bgp_conf: &str) -> Frr {
        let d = self.path(name);
        let ds = d.to_str().unwrap().to_string();
        let bfdd = format!(
            "hostname r\nlog file {ds}/bfdd.dlog debugging\nlog timestamp precision 6\ndebug bfd peer\n\
             bfd\n profile fast\n  receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!\n"
        );
        let f = Frr::start(self.netns(&node.ns), &d, bgp_conf, &bfdd).expect("frr");
        for x in ["zebra", "bfdd", "bgpd"] {
            self.logs
                .push((format!("{name}-{x}"), d.join(format!("{x}.log"))));
        }
        f
    }

    // ---- gobgpd ----

    pub fn gobgpd(&mut self, node: &Node, name: &str, toml: &str) -> Gobgpd {
        let g = Gobgpd::start(self.netns(&node.ns), &self.dir, name, toml).expect("gobgpd");
        self.logs
            .push((name.into(), self.path(&format!("{name}.log"))));
        g
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Routers and speakers are the test's own handles, dropped (killed)
        // before the lab; the helpers go now, then the namespaces.
        self.helpers.clear();
        if std::thread::panicking() {
            for (name, log) in &self.logs {
                eprintln!(
                    "---- log of {name} ----\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        self.namespaces.clear();
        if std::env::var_os("BERTH_KEEP_LAB").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Berth config with the usual knobs.
pub fn berth_conf(router_id: &str, status: &Path, peers: &str, announces: &str) -> String {
    format!(
        "router_id = \"{router_id}\"\nlocal_as = 64513\nstatus_file = \"{}\"\n{peers}\n{announces}\n",
        status.display()
    )
}

pub const ANNOUNCE: &str = r#"
[[announce]]
prefix = "198.19.100.10/32"
communities = ["64512:100"]
large_communities = ["64512:1:2"]
med = 10
[[announce]]
prefix = "2001:db8:100::10/128"
communities = ["64512:200"]
"#;

/// Seconds since midnight UTC now.
pub fn utc_day_seconds() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (d.as_secs() % 86400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// Time (seconds since midnight UTC) of the first `ip -ts monitor route` line
/// in `log` that contains all of `needles`.
pub fn monitor_time(log: &str, needles: &[&str]) -> Option<f64> {
    monitor_time_after(log, f64::MIN, needles)
}

/// Like [`monitor_time`], the first such line later than `after`.
pub fn monitor_time_after(log: &str, after: f64, needles: &[&str]) -> Option<f64> {
    for l in log.lines() {
        if !needles.iter().all(|n| l.contains(n)) {
            continue;
        }
        let ts = l.strip_prefix('[')?.split(']').next()?;
        let t = ts.split('T').nth(1)?;
        let mut it = t.split(':');
        let h: f64 = it.next()?.parse().ok()?;
        let m: f64 = it.next()?.parse().ok()?;
        let s: f64 = it.next()?.parse().ok()?;
        let t = h * 3600.0 + m * 60.0 + s;
        if t > after {
            return Some(t);
        }
    }
    None
}

/// Seconds since midnight UTC of a Unix time.
pub fn day_seconds(unix: f64) -> f64 {
    unix.rem_euclid(86400.0)
}

/// Arrival times (seconds since midnight UTC) of the UDP packets from `src`
/// in a `tcpdump -n -tt -l` log.
pub fn tcpdump_times(log: &str, src: &str) -> Vec<f64> {
    let from = format!(" IP {src}.");
    log.lines()
        .filter(|l| l.contains(&from))
        .filter_map(|l| l.split(' ').next()?.parse::<f64>().ok())
        .map(day_seconds)
        .collect()
}

/// Time (seconds since midnight UTC) of the first line of an FRR log written
/// with `log timestamp precision 6` in UTC ("YYYY/MM/DD HH:MM:SS.ffffff ...")
/// that is later than `after` and contains all of `needles`.
pub fn frr_log_time(log: &str, after: f64, needles: &[&str]) -> Option<f64> {
    for l in log.lines() {
        if !needles.iter().all(|n| l.contains(n)) {
            continue;
        }
        let t = l.split(' ').nth(1)?;
        let mut it = t.split(':');
        let h: f64 = it.next()?.parse().ok()?;
        let m: f64 = it.next()?.parse().ok()?;
        let s: f64 = it.next()?.parse().ok()?;
        let t = h * 3600.0 + m * 60.0 + s;
        if t > after {
            return Some(t);
        }
    }
    None
}

/// A multi-thread Tokio runtime whose threads all live in network namespace
/// `ns`: the library API runs in-process "on a node" while the test thread
/// (in the host namespace) drives it.
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    pub fn new(ns: &str) -> NsRuntime {
        let path = format!("/run/netns/{ns}");
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = fs::File::open(&path).unwrap();
            // SAFETY: moves only this thread (and the threads it creates:
            // the runtime's workers) into the test's namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            htx.send(rt.handle().clone()).unwrap();
            let _ = rt.block_on(stop_rx);
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        NsRuntime {
            handle: hrx.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `f` on a worker thread (in the namespace: sockets made there
    /// belong to it) and waits for its result.
    pub fn run<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .block_on(self.handle.spawn(f))
            .unwrap_or_else(|e| match e.try_into_panic() {
                Ok(p) => std::panic::resume_unwind(p),
                Err(e) => panic!("{e}"),
            })
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
