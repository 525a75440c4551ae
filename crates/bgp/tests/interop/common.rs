//! Test lab: network namespaces joined by a bridge that lives in a namespace
//! of its own, daemons run under `setsid ip netns exec`, and a Drop guard that
//! kills exactly the PIDs it started and removes every namespace, FRR runtime
//! directory and temp file, even when the test fails.
//!
//! Addresses: 198.18.0.0/24 and 2001:db8::/64 on the shared link, routes from
//! 198.19.0.0/16 and 2001:db8:100::/48.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Timing-sensitive tests take this exclusively; the others share it, so a
/// failover measurement never competes with five other labs for two cores.
static TIMING: RwLock<()> = RwLock::new(());

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// The speaker binary Cargo builds for these tests.
pub const BERTH: &str = env!("CARGO_BIN_EXE_berth-bgp");

pub fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    match Command::new(cmd).args(args).stdin(Stdio::null()).output() {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            (o.status.success(), s)
        }
        Err(e) => (false, format!("{cmd}: {e}")),
    }
}

pub fn must(cmd: &str, args: &[&str]) -> String {
    let (ok, out) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed: {out}");
    out
}

/// Polls `f` every 10 ms until it returns true; returns the time it took.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if f() {
            return t.elapsed();
        }
        if t.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Node {
    pub ns: String,
    pub v4: String,
    pub v6: String,
    /// Veth end in the fabric namespace.
    pub port: String,
}

pub struct Proc {
    pub pid: i32,
    pub name: String,
    pub log: PathBuf,
}

pub struct Lab {
    pub id: String,
    pub fabric: String,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    next_port: u32,
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
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("b{}{}{}", std::process::id(), tag, n);
        let dir = std::env::temp_dir().join(format!("berth-bgp-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        must("chmod", &["0755", dir.to_str().unwrap()]);
        let fabric = format!("{id}f");
        let mut lab = Lab {
            id,
            fabric: fabric.clone(),
            dir,
            namespaces: vec![],
            procs: vec![],
            next_port: 0,
            _guard: guard,
        };
        lab.add_ns(&fabric);
        must(
            "ip",
            &[
                "-n",
                &fabric,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
        );
        must("ip", &["-n", &fabric, "link", "set", "br0", "up"]);
        lab
    }

    fn add_ns(&mut self, ns: &str) {
        must("ip", &["netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        // No DAD: addresses are usable at once (and no procps needed for sysctl).
        let dad = "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad && echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad";
        must("ip", &["netns", "exec", ns, "sh", "-c", dad]);
    }

    /// A namespace on the shared link with 198.18.0.`host`/24 and 2001:db8::`host`/64.
    pub fn node(&mut self, name: &str, host: u8) -> Node {
        let ns = format!("{}{}", self.id, name);
        self.add_ns(&ns);
        let port = format!("v{}", self.next_port);
        self.next_port += 1;
        must(
            "ip",
            &[
                "-n",
                &self.fabric,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &self.fabric,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ],
        );
        let v4 = format!("198.18.0.{host}");
        let v6 = format!("2001:db8::{host:x}");
        must(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"],
        );
        must(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        Node { ns, v4, v6, port }
    }

    /// An empty namespace (for routed topologies built with [`Lab::link`]).
    pub fn bare_node(&mut self, name: &str) -> String {
        let ns = format!("{}{}", self.id, name);
        self.add_ns(&ns);
        ns
    }

    /// A second bridge in the fabric namespace.
    pub fn bridge(&self, name: &str) {
        must(
            "ip",
            &[
                "-n",
                &self.fabric,
                "link",
                "add",
                name,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
        );
        must("ip", &["-n", &self.fabric, "link", "set", name, "up"]);
    }

    /// Connects `ns` to `bridge` with interface `ifname` holding `cidr`.
    pub fn link(&mut self, ns: &str, bridge: &str, ifname: &str, cidr: &str) {
        let port = format!("v{}", self.next_port);
        self.next_port += 1;
        must(
            "ip",
            &[
                "-n",
                &self.fabric,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "netns",
                ns,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &self.fabric,
                "link",
                "set",
                &port,
                "master",
                bridge,
                "up",
            ],
        );
        must("ip", &["-n", ns, "addr", "add", cidr, "dev", ifname]);
        must("ip", &["-n", ns, "link", "set", ifname, "up"]);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).unwrap();
        p
    }

    /// Starts `cmd` in `ns` in a session of its own; returns its PID.
    pub fn spawn(&mut self, ns: &str, name: &str, cmd: &[&str]) -> i32 {
        let log = self.path(&format!("{name}.log"));
        let f = fs::File::create(&log).unwrap();
        let child = Command::new("setsid")
            .args(["ip", "netns", "exec", ns])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The child is reaped by the kernel once we drop the handle? No: keep
        // it from becoming a zombie by waiting in a thread.
        std::thread::spawn(move || {
            let mut c = child;
            let _ = c.wait();
        });
        self.procs.push(Proc {
            pid,
            name: name.to_string(),
            log,
        });
        pid
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    pub fn signal(&self, pid: i32, sig: i32) {
        // SAFETY: pid is one of ours.
        unsafe { libc::kill(pid, sig) };
    }

    /// Kills one of our processes and waits until it is gone.
    pub fn kill(&mut self, pid: i32) {
        self.signal(pid, libc::SIGKILL);
        let t = Instant::now();
        while Path::new(&format!("/proc/{pid}/stat")).exists()
            && t.elapsed() < Duration::from_secs(5)
        {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains(") Z") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cleanup_frr_dirs(pid);
        self.procs.retain(|p| p.pid != pid);
    }

    pub fn exec(&self, ns: &str, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", ns];
        args.extend_from_slice(cmd);
        run("ip", &args).1
    }

    pub fn kernel_route(&self, ns: &str, prefix: &str) -> String {
        let fam = if prefix.contains(':') { "-6" } else { "-4" };
        run("ip", &[fam, "-n", ns, "route", "show", prefix]).1
    }

    // ---- Berth ----

    /// Writes a speaker config and starts the speaker.
    pub fn berth(&mut self, node: &Node, name: &str, toml: &str) -> i32 {
        let cfg = self.write(&format!("{name}.toml"), toml);
        self.spawn(&node.ns, name, &[BERTH, "--config", cfg.to_str().unwrap()])
    }

    pub fn berth_status(&self, name: &str) -> String {
        fs::read_to_string(self.path(&format!("{name}.status"))).unwrap_or_default()
    }

    // ---- BIRD ----

    pub fn bird(&mut self, node: &Node, name: &str, body: &str) -> (i32, String) {
        let sock = self
            .path(&format!("{name}.ctl"))
            .to_str()
            .unwrap()
            .to_string();
        let conf = format!(
            "router id {v4};\n\
             protocol device {{ scan time 1; }}\n\
             protocol kernel k4 {{ ipv4 {{ export all; import none; }}; learn off; persist off; merge paths on limit 16; }}\n\
             protocol kernel k6 {{ ipv6 {{ export all; import none; }}; learn off; persist off; merge paths on limit 16; }}\n\
             protocol bfd {{ interface \"eth0\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             template bgp spk {{ local as 64512; hold time 3; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 10; \
             ipv4 {{ import all; export none; }}; ipv6 {{ import all; export none; }}; }}\n{body}\n",
            v4 = node.v4
        );
        let c = self.write(&format!("{name}.conf"), &conf);
        let pidf = self.path(&format!("{name}.pid"));
        let pid = self.spawn(
            &node.ns,
            name,
            &[
                "bird",
                "-f",
                "-c",
                c.to_str().unwrap(),
                "-s",
                &sock,
                "-P",
                pidf.to_str().unwrap(),
            ],
        );
        wait_for("bird control socket", Duration::from_secs(10), || {
            Path::new(&sock).exists()
        });
        (pid, sock)
    }

    pub fn birdc(&self, sock: &str, cmd: &str) -> String {
        let mut args = vec!["-s", sock];
        args.extend(cmd.split(' '));
        run("birdc", &args).1
    }

    // ---- FRR ----

    /// Starts zebra, bfdd and bgpd with all paths under the lab dir.
    pub fn frr(&mut self, node: &Node, name: &str, bgp_conf: &str) -> FrrHandle {
        let d = self.path(name);
        fs::create_dir_all(&d).unwrap();
        let ds = d.to_str().unwrap().to_string();
        fs::write(d.join("zebra.conf"), "hostname r\n").unwrap();
        // bfdd logs its state changes with microsecond timestamps (UTC) to
        // bfdd.dlog: the failover test reads FRR's detection time from it.
        fs::write(
            d.join("bfdd.conf"),
            format!(
                "hostname r\nlog file {ds}/bfdd.dlog debugging\nlog timestamp precision 6\ndebug bfd peer\n\
                 bfd\n profile fast\n  receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!\n"
            ),
        )
        .unwrap();
        fs::write(d.join("bgpd.conf"), bgp_conf).unwrap();
        fs::write(d.join("vtysh.conf"), "").unwrap();
        must("chown", &["-R", "frr:frr", &ds]);
        let mut pids = vec![];
        let zs = format!("{ds}/zserv.api");
        pids.push(self.spawn(
            &node.ns,
            &format!("{name}-zebra"),
            &[
                "/usr/lib/frr/zebra",
                "-f",
                &format!("{ds}/zebra.conf"),
                "-i",
                &format!("{ds}/zebra.pid"),
                "--vty_socket",
                &ds,
                "-z",
                &zs,
            ],
        ));
        wait_for("zebra socket", Duration::from_secs(10), || {
            Path::new(&zs).exists()
        });
        pids.push(self.spawn(
            &node.ns,
            &format!("{name}-bfdd"),
            &[
                "env",
                "TZ=UTC",
                "/usr/lib/frr/bfdd",
                "-f",
                &format!("{ds}/bfdd.conf"),
                "-i",
                &format!("{ds}/bfdd.pid"),
                "--vty_socket",
                &ds,
                "-z",
                &zs,
                "--bfdctl",
                &format!("{ds}/bfdd.sock"),
            ],
        ));
        pids.push(self.spawn(
            &node.ns,
            &format!("{name}-bgpd"),
            &[
                "/usr/lib/frr/bgpd",
                "-f",
                &format!("{ds}/bgpd.conf"),
                "-i",
                &format!("{ds}/bgpd.pid"),
                "--vty_socket",
                &ds,
                "-z",
                &zs,
            ],
        ));
        wait_for("bgpd vty socket", Duration::from_secs(10), || {
            d.join("bgpd.vty").exists()
        });
        FrrHandle { dir: ds, pids }
    }

    pub fn vtysh(&self, f: &FrrHandle, cmd: &str) -> String {
        run("vtysh", &["--vty_socket", &f.dir, "-c", cmd]).1
    }

    // ---- gobgpd ----

    pub fn gobgpd(&mut self, node: &Node, name: &str, toml: &str) -> (i32, u16) {
        let api = 50051u16;
        let c = self.write(&format!("{name}.toml"), toml);
        let pid = self.spawn(
            &node.ns,
            name,
            &[
                "gobgpd",
                "-f",
                c.to_str().unwrap(),
                "-p",
                "--api-hosts",
                &format!("127.0.0.1:{api}"),
                "--pprof-disable",
            ],
        );
        (pid, api)
    }

    pub fn gobgp(&self, node: &Node, args: &[&str]) -> String {
        let mut a = vec!["gobgp"];
        a.extend_from_slice(args);
        self.exec(&node.ns, &a)
    }
}

pub struct FrrHandle {
    pub dir: String,
    pub pids: Vec<i32>,
}

fn cleanup_frr_dirs(pid: i32) {
    for d in ["zebra", "bfdd", "bgpd", "staticd"] {
        let _ = fs::remove_dir_all(format!("/var/tmp/frr/{d}.{pid}"));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &self.procs {
            // SAFETY: only PIDs this lab started.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        for p in &self.procs {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) {
                match fs::read_to_string(format!("/proc/{}/stat", p.pid)) {
                    Ok(s) if !s.contains(") Z") => std::thread::sleep(Duration::from_millis(10)),
                    _ => break,
                }
            }
            cleanup_frr_dirs(p.pid);
        }
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!(
                    "---- log of {} ----\n{}",
                    p.name,
                    fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
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
