//! Network namespaces, bridge fabrics between them, and JSON views of their addresses/routes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::Daemon;
use crate::util::{check_test_addr, run_checked, tool, unique_name};

/// A named network namespace (`ip netns add`), deleted on Drop.
///
/// Why: every test link, address, route and namespaced daemon lives in a namespace the harness
/// created, so the host's network is never touched and parallel tests never see each other.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates an empty namespace named `bt-<pid>-<n>-<label>` (only `lo`, left down).
    ///
    /// Why: the bare namespace a CNI runtime hands to plugins as a pod; nodes use
    /// [`Fabric::node`] or call [`Netns::lo_up`] themselves.
    pub fn new(label: &str) -> Result<Netns> {
        crate::util::sweep_stale_once();
        let name = unique_name(label);
        run_checked(Command::new(tool("ip")).args(["netns", "add", &name]))?;
        Ok(Netns { name, owned: true })
    }

    /// A handle on an existing namespace that is never deleted on Drop.
    ///
    /// Why: a lab's namespaces outlive the handles tests and `berth lab` hold; the lab's
    /// teardown removes them from its record.
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            owned: false,
        }
    }

    /// The namespace name (as used by `ip netns` / `ip -n`). Why: build commands by hand.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`. Why: the value of `CNI_NETNS`, and what `setns` callers open.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Brings `lo` up. Why: daemons in node namespaces listen on loopback.
    pub fn lo_up(&self) -> Result<()> {
        self.ip(["link", "set", "lo", "up"]).map(|_| ())
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec NAME program`).
    ///
    /// Why: the building block for everything that must run "on the node".
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args…` in the namespace and returns stdout; fails on non-zero exit.
    ///
    /// Why: one-line checks such as `ns.exec("ping", [...])` or `ns.exec("ss", ["-ltn"])`.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let prog = crate::util::find_tool(program).unwrap_or_else(|| program.into());
        let out = run_checked(self.command(prog).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ip -n NAME args…` and returns stdout; fails on non-zero exit.
    ///
    /// Why: configure links, addresses and routes of the namespace from outside it.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = run_checked(Command::new(tool("ip")).args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ip -n NAME -j args…` and parses the JSON (an empty output gives `[]`).
    ///
    /// Why: assertions on kernel state read structured data, not scraped text.
    pub fn ip_json<I, S>(&self, args: I) -> Result<Value>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = run_checked(
            Command::new(tool("ip"))
                .args(["-n", &self.name, "-j"])
                .args(args),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(Value::Array(Vec::new()));
        }
        serde_json::from_str(&text).with_context(|| format!("parsing `ip -j` output: {text}"))
    }

    /// Spawns `program args…` inside the namespace as a [`Daemon`] (setsid, PID recorded,
    /// killed on Drop), logging to `log` or a private temp file.
    ///
    /// Why: routing daemons, etcd or the Berth agent "on a node". The daemon must stay in the
    /// foreground. Keep the namespace alive at least as long as the daemon.
    pub fn spawn<I, S>(&self, program: &str, args: I, log: Option<&Path>) -> Result<Daemon>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let prog = crate::util::find_tool(program).unwrap_or_else(|| program.into());
        let mut cmd = self.command(prog);
        cmd.args(args);
        Daemon::spawn(&format!("{}@{}", program, self.name), cmd, log)
    }

    /// Turns IPv6 duplicate address detection off for every interface created in or moved into
    /// the namespace from now on (`net.ipv6.conf.{all,default}.accept_dad = 0`).
    ///
    /// Why: a fresh link-local address is "tentative" for about a second; BGP and BFD tests
    /// that use link-local next hops or IPv6 sessions must not wait for DAD. Call it before
    /// attaching links.
    pub fn disable_dad(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        self.sysctl("net.ipv6.conf.default.accept_dad", "0")
    }

    /// Sets a per-namespace `net.*` sysctl, e.g. `("net.ipv4.ip_forward", "1")`.
    ///
    /// Why: routers and nodes need forwarding or ARP settings; only `net.*` keys are accepted,
    /// because other sysctls are machine-wide and tests must not change the host.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        if !key.starts_with("net.") || key.contains("..") || key.contains('/') {
            bail!("sysctl `{key}` refused: only per-namespace net.* keys may be set");
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let mut cmd = self.command(tool("sh"));
        cmd.args(["-c", "printf '%s' \"$1\" > \"$2\"", "sh", value, &path]);
        run_checked(&mut cmd)?;
        Ok(())
    }

    /// Adds an address (`ADDR/LEN`, test ranges only) to `dev`. IPv6 addresses skip DAD.
    ///
    /// Why: give nodes and routers their test addresses, refusing anything outside
    /// 198.18.0.0/15 and 2001:db8::/32.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> Result<()> {
        let ip = check_test_addr(cidr)?;
        if ip.is_ipv6() {
            self.ip(["addr", "add", cidr, "dev", dev, "nodad"])?;
        } else {
            self.ip(["addr", "add", cidr, "dev", dev])?;
        }
        Ok(())
    }

    /// `ip -j addr show dev DEV` parsed: an array with one object per link, each with an
    /// `addr_info` array (`family`, `local`, `prefixlen`, ...).
    ///
    /// Why: check where a CNI plugin or the agent put addresses.
    pub fn addrs(&self, dev: &str) -> Result<Value> {
        self.ip_json(["addr", "show", "dev", dev])
    }

    /// The addresses on `dev` as `ADDR/LEN` strings (global and link scope, both families).
    ///
    /// Why: the short form most assertions want.
    pub fn addr_list(&self, dev: &str) -> Result<Vec<String>> {
        let v = self.addrs(dev)?;
        let mut out = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                if let (Some(l), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                    out.push(format!("{l}/{p}"));
                }
            }
        }
        Ok(out)
    }

    /// IPv4 routes of the main table (`ip -j route`) parsed. Why: check routes the code set.
    pub fn routes(&self) -> Result<Value> {
        self.ip_json(["route"])
    }

    /// IPv6 routes of the main table (`ip -j -6 route`) parsed. Why: the IPv6 counterpart.
    pub fn routes6(&self) -> Result<Value> {
        self.ip_json(["-6", "route"])
    }

    /// Routes of any table and family: `ip -j [-6] route show table T` parsed.
    ///
    /// Why: policy-routing and BGP tests look at other tables.
    pub fn routes_in_table(&self, v6: bool, table: &str) -> Result<Value> {
        let mut args = Vec::new();
        if v6 {
            args.push("-6");
        }
        args.extend(["route", "show", "table", table]);
        self.ip_json(args)
    }

    /// `ip -j link show dev DEV` parsed, or `None` if the link does not exist.
    ///
    /// Why: check that CNI DEL removed an interface, or a link's state.
    pub fn link(&self, dev: &str) -> Result<Option<Value>> {
        let out = Command::new(tool("ip"))
            .args(["-n", &self.name, "-j", "link", "show", "dev", dev])
            .stdin(std::process::Stdio::null())
            .output()?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("does not exist") {
                return Ok(None);
            }
            bail!("ip link show {dev} in {}: {err}", self.name);
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v.as_array().and_then(|a| a.first()).cloned())
    }

    /// Creates bridge `name` here and sets it up: STP off, forward delay 0, multicast
    /// snooping off, so NDP and VRRP multicast always flood.
    ///
    /// Why: every L2 segment of the test world and the lab is such a bridge.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.ip([
            "link",
            "add",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        self.ip(["link", "set", name, "up"]).map(|_| ())
    }

    /// Sets a link up or down. Why: simulate a cable pull.
    pub fn set_link(&self, dev: &str, up: bool) -> Result<()> {
        self.ip(["link", "set", dev, if up { "up" } else { "down" }])
            .map(|_| ())
    }

    /// Pings a test address from inside the namespace: up to `count` echo requests, success on
    /// the first reply. Only 198.18.0.0/15, 2001:db8::/32 and loopback are allowed.
    ///
    /// Why: reachability checks between namespaces without any chance of pinging the outside.
    pub fn ping(&self, addr: &str, count: u32) -> Result<()> {
        let ip = check_test_addr(addr)?;
        let mut cmd = self.command(tool("ping"));
        cmd.args(["-n", "-q", "-W", "1", "-w"])
            .arg((count + 1).to_string())
            .arg("-c")
            .arg("1")
            .arg(if ip.is_ipv6() { "-6" } else { "-4" })
            .arg(ip.to_string());
        run_checked(&mut cmd)
            .with_context(|| format!("ping {ip} from {}", self.name))
            .map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let r = Command::new(tool("ip"))
            .args(["netns", "del", &self.name])
            .stdin(std::process::Stdio::null())
            .output();
        match r {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "berth-testbed: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("berth-testbed: ip netns del {}: {e}", self.name),
        }
    }
}

/// Creates an empty "pod" namespace: just `ip netns add`, no links configured.
///
/// Why: a CNI main plugin (bridge, macvlan) creates the pod's interface itself; the harness
/// only provides what a container runtime would, a fresh namespace at `/run/netns/NAME`.
pub fn pod_netns(label: &str) -> Result<Netns> {
    Netns::new(label)
}

/// A switch: a namespace holding one Linux bridge (`br0`, STP off, forward delay 0) that node
/// namespaces plug into through veth pairs.
///
/// Why: tests need an L2 segment between "nodes" and "routers" that exists only inside
/// namespaces. Both ends of every veth are created inside the fabric namespace and one end is
/// moved straight into the node, so the root namespace never sees a test link.
#[derive(Debug)]
pub struct Fabric {
    ns: Netns,
    next_port: AtomicU32,
}

/// Name of the bridge inside every fabric namespace.
pub const FABRIC_BRIDGE: &str = "br0";

impl Fabric {
    /// Creates the fabric namespace and its bridge (up, STP off, forward delay 0, multicast
    /// snooping off so NDP and VRRP multicast always flood).
    ///
    /// Why: a ready-to-use L2 segment in one call.
    pub fn new(label: &str) -> Result<Fabric> {
        let ns = Netns::new(&format!("fab{label}"))?;
        ns.lo_up()?;
        ns.add_bridge(FABRIC_BRIDGE)?;
        Ok(Fabric {
            ns,
            next_port: AtomicU32::new(0),
        })
    }

    /// The fabric's own namespace. Why: capture traffic (`tcpdump -i br0`) or pull ports down.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Plugs `ns` into the bridge: creates veth `pN` (fabric side, enslaved to `br0`) whose peer
    /// becomes `ifname` inside `ns`, brings both up and adds `addrs` (`ADDR/LEN`, test ranges
    /// only) to `ifname`. Returns the fabric-side port name.
    ///
    /// Why: one call per node/router link; use the returned port with [`Fabric::set_port`]
    /// to cut the link from the switch side.
    pub fn attach(&self, ns: &Netns, ifname: &str, addrs: &[&str]) -> Result<String> {
        self.attach_to(FABRIC_BRIDGE, ns, ifname, addrs)
    }

    /// Adds another bridge (STP off, forward delay 0, no multicast snooping) to the fabric.
    ///
    /// Why: routed topologies need two segments, e.g. a speaker and a router two hops apart
    /// with a forwarding namespace between the bridges (eBGP multihop tests).
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.ns.add_bridge(name)
    }

    /// [`Fabric::attach`] to `bridge` (one made by [`Fabric::add_bridge`]) instead of `br0`.
    ///
    /// Why: plug a namespace into the second segment of a routed topology.
    pub fn attach_to(
        &self,
        bridge: &str,
        ns: &Netns,
        ifname: &str,
        addrs: &[&str],
    ) -> Result<String> {
        for a in addrs {
            check_test_addr(a)?;
        }
        let port = format!("p{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        self.ns.ip([
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns.name(),
        ])?;
        self.ns.ip(["link", "set", &port, "master", bridge, "up"])?;
        ns.ip(["link", "set", ifname, "up"])?;
        for a in addrs {
            ns.add_addr(ifname, a)?;
        }
        Ok(port)
    }

    /// Creates a "node" namespace (with `lo` up) and attaches it as `eth0` with `addrs`.
    ///
    /// Why: the usual way to get a node on the segment.
    pub fn node(&self, label: &str, addrs: &[&str]) -> Result<Netns> {
        let ns = Netns::new(label)?;
        ns.lo_up()?;
        self.attach(&ns, "eth0", addrs)?;
        Ok(ns)
    }

    /// Sets a fabric-side port up or down. Why: cut a node off the switch (failover tests).
    pub fn set_port(&self, port: &str, up: bool) -> Result<()> {
        self.ns.set_link(port, up)
    }
}

impl Fabric {
    /// Drops every frame between the ports in `a` and the ports in `b` on the bridge (both
    /// ways), with an nftables bridge-family table; others pass. Replaces an earlier cut.
    ///
    /// Why: a partition in which the cut-off node still reaches the client (on another port),
    /// which a link down cannot produce.
    pub fn cut(&self, a: &[&str], b: &[&str]) -> Result<()> {
        let set = |ps: &[&str]| {
            ps.iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rules = format!(
            "table bridge berth_cut {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  iifname {{ {a} }} oifname {{ {b} }} drop\n  iifname {{ {b} }} oifname {{ {a} }} drop\n }}\n}}\n",
            a = set(a),
            b = set(b)
        );
        let _ = self.uncut();
        let mut cmd = self.netns().command(crate::util::tool("nft"));
        cmd.args(["-f", "-"]);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().context("running nft (install nftables)")?;
        if let Some(mut i) = child.stdin.take() {
            use std::io::Write;
            i.write_all(rules.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Removes the cut.
    pub fn uncut(&self) -> Result<()> {
        self.netns()
            .exec("nft", ["delete", "table", "bridge", "berth_cut"])
            .map(|_| ())
    }

    /// Creates a node namespace attached as `eth0` and returns it with its bridge port.
    ///
    /// Why: failover tests pull a node's port (link down) or cut it off by port.
    pub fn node_with_port(&self, label: &str, addrs: &[&str]) -> Result<(Netns, String)> {
        let ns = Netns::new(label)?;
        ns.lo_up()?;
        let port = self.attach(&ns, "eth0", addrs)?;
        Ok((ns, port))
    }
}
