//! Real routing daemons as test peers, each in a namespace the test created: BIRD 2, FRR 8.4
//! (zebra + bfdd + bgpd) and gobgpd 3.
//!
//! Why: the BGP speaker is only correct if real routers accept it, so its tests (and, later,
//! the agent's) peer with these daemons. Each runs as a [`Daemon`] (own session, recorded PID,
//! killed on Drop and when the test process dies), with every path on the command line under a
//! directory the test owns, so nothing touches `/etc` or `/run` and parallel tests never share
//! a socket. FRR's per-daemon runtime directories (`/var/tmp/frr/<daemon>.<pid>/`) are removed
//! when its daemons stop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use berth_lab::{find_tool, run_checked, tool, wait_for, Daemon, Netns};

/// Tools the BGP interop tests need: iproute2, BIRD, FRR, gobgpd and tcpdump.
///
/// Why: one list for [`crate::require_tools`], so a machine without the routing daemons fails
/// before a test builds half its topology (install them with `hack/install-deps.sh`).
pub const BGP_TOOLS: &[&str] = &[
    "ip",
    "bird",
    "birdc",
    "/usr/lib/frr/zebra",
    "/usr/lib/frr/bfdd",
    "/usr/lib/frr/bgpd",
    "vtysh",
    "gobgpd",
    "gobgp",
    "tcpdump",
];

/// Runs a control client and returns stdout and stderr together, whatever its exit status.
///
/// Why: tests poll `birdc`/`vtysh`/`gobgp` output until it shows what they wait for; a daemon
/// that is not up yet is an answer to retry, not an error.
fn client(cmd: &mut Command) -> String {
    match cmd.stdin(std::process::Stdio::null()).output() {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        }
        Err(e) => format!("{cmd:?}: {e}"),
    }
}

fn wait_path(what: &str, p: &Path) -> Result<()> {
    wait_for(
        what,
        Duration::from_secs(10),
        Duration::from_millis(10),
        || p.exists().then_some(()),
    )
}

/// A BIRD 2 daemon (`bird -f`), controlled through its own socket.
#[derive(Debug)]
pub struct Bird {
    daemon: Daemon,
    ctl: PathBuf,
}

impl Bird {
    /// Writes `conf` to `dir/NAME.conf` and starts `bird -f -c … -s dir/NAME.ctl -P dir/NAME.pid`
    /// inside `ns`, logging to `dir/NAME.log`; returns once the control socket exists.
    ///
    /// Why: a real BGP peer (and its BFD and kernel protocols) in one call.
    pub fn start(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Result<Bird> {
        let c = dir.join(format!("{name}.conf"));
        std::fs::write(&c, conf).with_context(|| format!("writing {}", c.display()))?;
        let ctl = dir.join(format!("{name}.ctl"));
        let _ = std::fs::remove_file(&ctl);
        let pid = dir.join(format!("{name}.pid"));
        let mut cmd = ns.command(tool("bird"));
        cmd.arg("-f")
            .arg("-c")
            .arg(&c)
            .arg("-s")
            .arg(&ctl)
            .arg("-P")
            .arg(&pid);
        let log = dir.join(format!("{name}.log"));
        let mut daemon = Daemon::spawn(&format!("bird@{}", ns.name()), cmd, Some(&log))?;
        if let Err(e) = wait_path("BIRD's control socket", &ctl) {
            bail!("{e}; bird log:\n{}", daemon.log_tail(20));
        }
        if !daemon.is_running() {
            bail!("bird exited at start:\n{}", daemon.log_tail(20));
        }
        Ok(Bird { daemon, ctl })
    }

    /// `birdc -s CTL CMD…` (the command split at spaces); its output, errors included.
    ///
    /// Why: query protocols and routes (`show protocols all s1`, `show route … all`).
    pub fn birdc(&self, cmd: &str) -> String {
        let mut c = Command::new(tool("birdc"));
        c.arg("-s").arg(&self.ctl).args(cmd.split(' '));
        client(&mut c)
    }

    /// The daemon. Why: signal it, read its log.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

/// FRR's daemons for a BGP router: zebra, bfdd and bgpd, run as user `frr`.
#[derive(Debug)]
pub struct Frr {
    dir: PathBuf,
    ns_name: String,
    daemons: Vec<Daemon>,
}

/// Removes the runtime directories an FRR daemon with `pid` left in `/var/tmp/frr`.
fn remove_frr_runtime_dirs(pid: u32) {
    for d in ["zebra", "bfdd", "bgpd", "staticd"] {
        let _ = std::fs::remove_dir_all(format!("/var/tmp/frr/{d}.{pid}"));
    }
}

impl Frr {
    /// Starts zebra, bfdd and bgpd in `ns` with every path under `dir` (created and given to
    /// user `frr`): `zebra.conf` (hostname only), `bfdd.conf` = `bfdd_conf`, `bgpd.conf` =
    /// `bgpd_conf`, the vty sockets and `zserv.api`. Logs go to `dir/{zebra,bfdd,bgpd}.log`.
    ///
    /// Why: FRR must not touch `/etc/frr` or the host's `/var/run/frr`, and its daemons cannot
    /// skip dropping privileges, so the directory must belong to `frr`. bfdd runs with TZ=UTC
    /// so logs with `log timestamp precision 6` can be compared with other clocks.
    pub fn start(ns: &Netns, dir: &Path, bgpd_conf: &str, bfdd_conf: &str) -> Result<Frr> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("zebra.conf"), "hostname r\n")?;
        std::fs::write(dir.join("bfdd.conf"), bfdd_conf)?;
        std::fs::write(dir.join("bgpd.conf"), bgpd_conf)?;
        std::fs::write(dir.join("vtysh.conf"), "")?;
        run_checked(
            Command::new(tool("chown"))
                .arg("-R")
                .arg("frr:frr")
                .arg(dir),
        )?;
        let mut frr = Frr {
            dir: dir.to_path_buf(),
            ns_name: ns.name().to_string(),
            daemons: Vec::new(),
        };
        let zs = dir.join("zserv.api");
        let zebra = frr.spawn(ns, "zebra", &[])?;
        frr.daemons.push(zebra);
        wait_path("zebra's zserv socket", &zs)?;
        let bfdctl = dir.join("bfdd.sock");
        let bfdd = frr.spawn(
            ns,
            "bfdd",
            &[std::ffi::OsStr::new("--bfdctl"), bfdctl.as_os_str()],
        )?;
        frr.daemons.push(bfdd);
        frr.start_bgpd(ns)?;
        Ok(frr)
    }

    fn spawn(&self, ns: &Netns, daemon: &str, extra: &[&std::ffi::OsStr]) -> Result<Daemon> {
        let bin = format!("/usr/lib/frr/{daemon}");
        if find_tool(&bin).is_none() {
            bail!("{bin} not found: install frr (hack/install-deps.sh)");
        }
        let d = &self.dir;
        let mut cmd = ns.command(&bin);
        cmd.env("TZ", "UTC")
            .arg("-f")
            .arg(d.join(format!("{daemon}.conf")))
            .arg("-i")
            .arg(d.join(format!("{daemon}.pid")))
            .arg("--vty_socket")
            .arg(d)
            .arg("-z")
            .arg(d.join("zserv.api"))
            .args(extra);
        let log = d.join(format!("{daemon}.log"));
        Daemon::spawn(&format!("{daemon}@{}", ns.name()), cmd, Some(&log))
    }

    fn start_bgpd(&mut self, ns: &Netns) -> Result<()> {
        let vty = self.dir.join("bgpd.vty");
        let _ = std::fs::remove_file(&vty);
        let bgpd = self.spawn(ns, "bgpd", &[])?;
        self.daemons.push(bgpd);
        wait_path("bgpd's vty socket", &vty)
    }

    /// Kills bgpd alone (SIGKILL) and starts it again on the same configuration.
    ///
    /// Why: a peer restart with zebra and bfdd staying up, as in a real router upgrade.
    pub fn restart_bgpd(&mut self, ns: &Netns) -> Result<()> {
        if let Some(i) = self
            .daemons
            .iter()
            .position(|d| d.label().starts_with("bgpd@"))
        {
            let mut d = self.daemons.remove(i);
            d.kill();
            remove_frr_runtime_dirs(d.pid());
        }
        self.start_bgpd(ns)
    }

    /// `vtysh -c CMD` against this FRR; its output, errors included.
    ///
    /// Why: read neighbours, routes and BFD peers (`show bgp neighbor …`, `show bfd peer …`).
    pub fn vtysh(&self, cmd: &str) -> String {
        let mut c = Command::new(tool("vtysh"));
        c.arg("--vty_socket").arg(&self.dir).arg("-c").arg(cmd);
        client(&mut c)
    }

    /// `vtysh -c 'configure terminal' -c LINE…` run inside the router's namespace.
    ///
    /// Why: change the router's configuration at run time (e.g. `no neighbor X passive`).
    pub fn configure(&self, lines: &[&str]) -> String {
        let mut c = Command::new(tool("ip"));
        c.args(["netns", "exec", &self.ns_name])
            .arg(tool("vtysh"))
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", "configure terminal"]);
        for l in lines {
            c.arg("-c").arg(l);
        }
        client(&mut c)
    }

    /// The directory holding FRR's configuration, sockets and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemons (zebra, bfdd, bgpd). Why: read their logs.
    pub fn daemons(&self) -> &[Daemon] {
        &self.daemons
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        for d in self.daemons.iter_mut().rev() {
            d.kill();
            remove_frr_runtime_dirs(d.pid());
        }
    }
}

/// A gobgpd 3 daemon with its gRPC API on the namespace's loopback.
#[derive(Debug)]
pub struct Gobgpd {
    daemon: Daemon,
    ns_name: String,
}

impl Gobgpd {
    /// Writes `toml` to `dir/NAME.toml` and starts `gobgpd -f … -p --api-hosts 127.0.0.1:50051`
    /// in `ns` (the API port is the namespace's own, so parallel tests do not meet).
    ///
    /// Why: the third independent BGP implementation the speaker is tested against.
    pub fn start(ns: &Netns, dir: &Path, name: &str, toml: &str) -> Result<Gobgpd> {
        let c = dir.join(format!("{name}.toml"));
        std::fs::write(&c, toml)?;
        let mut cmd = ns.command(tool("gobgpd"));
        cmd.arg("-f")
            .arg(&c)
            .args(["-p", "--api-hosts", "127.0.0.1:50051", "--pprof-disable"]);
        let log = dir.join(format!("{name}.log"));
        let daemon = Daemon::spawn(&format!("gobgpd@{}", ns.name()), cmd, Some(&log))?;
        Ok(Gobgpd {
            daemon,
            ns_name: ns.name().to_string(),
        })
    }

    /// `gobgp ARGS…` inside the namespace; its output, errors included.
    ///
    /// Why: read neighbours and the RIB (`neighbor X`, `global rib -a ipv4`).
    pub fn gobgp(&self, args: &[&str]) -> String {
        let mut c = Command::new(tool("ip"));
        c.args(["netns", "exec", &self.ns_name])
            .arg(tool("gobgp"))
            .args(args);
        client(&mut c)
    }

    /// The daemon. Why: kill it to test a peer restart, read its log.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}
