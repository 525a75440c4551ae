//! The lab world: a Kubernetes v1.20.2 control plane and N real nodes (containerd, kubelet,
//! kube-proxy) on one LAN, with an outside client, a router and a far client behind it; Berth
//! deployed from `deploy/`.
//!
//! Why: `berth lab up` and the tests on real nodes build exactly this, with one code path. The
//! layout (all inside namespaces the lab creates; only 198.18.0.0/15 and 2001:db8::/32):
//!
//! ```text
//!              PREFIX-fabric: br0 = the LAN 198.18.0.0/24, 2001:db8::/64
//!   ┌──────────┬──────────────┬───────────┬──────────────┬────────────────┐
//!  PREFIX-cp  PREFIX-node1 … PREFIX-nodeN  PREFIX-outside  PREFIX-router (BIRD 2, idle)
//!  .2 apiserver  .11 …         .10+N        .100           .1 │ eth1 198.19.255.1
//!  etcd, cm,   containerd, kubelet,                           │ br1 = 198.19.255.0/24,
//!  scheduler   kube-proxy (iptables)                          │       2001:db8:ffff::/64
//!                                                          PREFIX-far .10 (default via router)
//! ```
//!
//! The nodes have no default route (kubelet probes 169.254.169.254 otherwise). The host reaches
//! the apiserver through a Unix-socket relay (two `socat`s) at `https://127.0.0.1:PORT`; nodes
//! reach it over the LAN at 198.18.0.2:6443, and it reaches kubelets only at their InternalIPs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::cgroup::{self, Hierarchy};
use crate::image;
use crate::kube::{ApiResponse, KubeControlPlane};
use crate::net::Netns;
use crate::node::{self, NodeSpec};
use crate::process::{Daemon, SpawnOpts};
use crate::state::{self, Recorder};
use crate::util::{free_ports, run_checked, tool};

/// Name prefix of `berth lab up` (namespaces `lab-node1`, `lab-outside`, …).
pub const DEFAULT_PREFIX: &str = "lab";
/// State directory of `berth lab up`; the kubeconfig is `kubeconfig` in it.
pub const DEFAULT_STATE_DIR: &str = "/run/berth-lab";

/// The lab's address plan. Why: documented once, used by the world, the overlay and tests.
pub mod addr {
    /// The LAN (IPv4), shared by the control plane, nodes, outside and router.
    pub const LAN: &str = "198.18.0.0/24";
    /// The LAN (IPv6).
    pub const LAN6: &str = "2001:db8::/64";
    /// The router's LAN address (v4).
    pub const ROUTER: &str = "198.18.0.1";
    /// The router's LAN address (v6).
    pub const ROUTER6: &str = "2001:db8::1";
    /// The control plane's LAN address: the apiserver listens on :6443 here.
    pub const CONTROL_PLANE: &str = "198.18.0.2";
    /// The control plane's LAN address (v6).
    pub const CONTROL_PLANE6: &str = "2001:db8::2";
    /// The outside client's LAN address.
    pub const OUTSIDE: &str = "198.18.0.100";
    /// The outside client's LAN address (v6).
    pub const OUTSIDE6: &str = "2001:db8::100";
    /// The far segment behind the router (v4).
    pub const FAR_NET: &str = "198.19.255.0/24";
    /// The far segment behind the router (v6).
    pub const FAR_NET6: &str = "2001:db8:ffff::/64";
    /// The router's address on the far segment.
    pub const ROUTER_FAR: &str = "198.19.255.1";
    /// The router's address on the far segment (v6).
    pub const ROUTER_FAR6: &str = "2001:db8:ffff::1";
    /// The far client.
    pub const FAR: &str = "198.19.255.10";
    /// The far client (v6).
    pub const FAR6: &str = "2001:db8:ffff::10";
    /// Service ClusterIPs (the `kubernetes` Service is 198.18.16.1).
    pub const SERVICE_CIDR: &str = "198.18.16.0/20";
    /// Pod addresses (deploy/overlays/lab's pool).
    pub const POD_CIDR: &str = "198.18.64.0/18";
    /// The apiserver's port on the control plane's address.
    pub const API_PORT: u16 = 6443;

    /// Node `i`'s (1-based) InternalIP.
    pub fn node(i: usize) -> String {
        format!("198.18.0.{}", 10 + i)
    }

    /// Node `i`'s (1-based) IPv6 LAN address.
    pub fn node6(i: usize) -> String {
        format!("2001:db8::{}", 10 + i)
    }
}

/// The router's BIRD configuration: its id, the device protocol, then `body`.
fn router_conf(body: &str) -> String {
    format!(
        "# berth lab: the router, idle until BGP peers are configured.\n\
         router id {};\nprotocol device {{ scan time 10; }}\n{body}",
        addr::ROUTER
    )
}

/// What to apply once the nodes run.
#[derive(Debug, Clone)]
pub enum Deploy {
    /// Nothing: the nodes stay NotReady (no CNI configuration) until something is applied.
    Nothing,
    /// `kubectl apply -k DIR` (a kustomization: `deploy/overlays/lab` or one of its copies).
    Kustomize(PathBuf),
    /// deploy/'s lab overlay as compiled into this binary, written under the state dir.
    Embedded,
}

/// How a lab is built. Why: `berth lab up` and the tests differ only in these values.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Prefix of every name (namespaces, cgroups): [`DEFAULT_PREFIX`], or a unique one per test.
    pub prefix: String,
    /// Where state, configs, logs and per-node directories live; [`DEFAULT_STATE_DIR`].
    pub state_dir: PathBuf,
    /// Number of nodes (1–50).
    pub nodes: usize,
    /// Directory with the static `berth` and `berth-ipam` the images are made of.
    pub bins: PathBuf,
    /// Directory with the Kubernetes v1.20.2 binaries (`hack/kube-build.sh`).
    pub kube_bin: PathBuf,
    /// The world outlives this process (`berth lab up`); otherwise it dies with it and is torn
    /// down when the [`Lab`] is dropped (tests).
    pub detached: bool,
    /// What to apply.
    pub deploy: Deploy,
    /// Bound on each wait (control plane, nodes Ready, agents serving).
    pub timeout: Duration,
    /// Leave a lab whose `up` failed in place (for `berth lab status` and its logs) instead of
    /// tearing it down; `berth lab down` removes it.
    pub keep_on_failure: bool,
}

impl LabConfig {
    /// `berth lab up`'s defaults: prefix `lab`, `/run/berth-lab`, 3 nodes, the embedded
    /// overlay, detached.
    pub fn user(bins: PathBuf) -> LabConfig {
        LabConfig {
            prefix: DEFAULT_PREFIX.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            nodes: 3,
            bins,
            kube_bin: crate::kube::kube_bin_dir(),
            detached: true,
            deploy: Deploy::Embedded,
            timeout: Duration::from_secs(300),
            keep_on_failure: false,
        }
    }
}

/// A node of a running lab. Why: tests address nodes by name, address and namespace.
#[derive(Debug, Clone)]
pub struct LabNode {
    /// The node's facts (name, InternalIP, dirs).
    pub spec: NodeSpec,
    /// 1-based index.
    pub index: usize,
    /// Its persistent mount namespace file.
    pub mount_ns: PathBuf,
    /// Its cgroup path (same in every hierarchy), e.g. `/…/berth-lab/lab-node1`.
    pub cgroup: String,
}

impl LabNode {
    /// The node's name (its namespace's name and its Node object's name).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The node's InternalIP.
    pub fn ip(&self) -> &str {
        &self.spec.ip
    }

    /// A command run "on the node": in its network and mount namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(tool("nsenter"));
        c.arg(format!("--mount={}", self.mount_ns.display()))
            .arg(format!("--net=/run/netns/{}", self.spec.name))
            .arg("--")
            .arg(program);
        c.current_dir("/");
        c
    }

    /// Runs `program args…` on the node and returns stdout; fails on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = run_checked(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Takes the node's LAN link (`eth0`) down or up, as a cut cable or a switch port would.
    ///
    /// Why not a bare `ip link set`: the kernel flushes an interface's IPv4 routes when it goes
    /// down and brings back only the connected prefix; on up this puts back the lab's own routes
    /// (the ClusterIP range, the far segment), as a node's network manager would. Berth's pod
    /// routes are the agent's to restore.
    pub fn set_lan(&self, up: bool) -> Result<()> {
        self.exec(
            "ip",
            &["link", "set", "eth0", if up { "up" } else { "down" }],
        )?;
        if up {
            self.exec(
                "ip",
                &["route", "replace", addr::SERVICE_CIDR, "dev", "eth0"],
            )?;
            self.exec(
                "ip",
                &["route", "replace", addr::FAR_NET, "via", addr::ROUTER],
            )?;
            // The IPv6 prefix route comes back with the link a moment later.
            let mut tries = 0;
            while let Err(e) = self.exec(
                "ip",
                &[
                    "-6",
                    "route",
                    "replace",
                    addr::FAR_NET6,
                    "via",
                    addr::ROUTER6,
                ],
            ) {
                tries += 1;
                if tries > 50 {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The agent's socket as seen from the host. Why: tests ask the agent directly.
    pub fn agent_socket(&self) -> PathBuf {
        self.spec.backing("/run/berth").join("agent.sock")
    }
}

/// A running lab. Dropping it tears everything down unless it was built detached (then
/// [`Lab::detach`] hands it over to `berth lab down`).
pub struct Lab {
    cfg: LabConfig,
    rec: Recorder,
    hier: Vec<Hierarchy>,
    cg_root: String,
    cp: Option<KubeControlPlane>,
    daemons: Mutex<Vec<Daemon>>,
    nodes: Vec<LabNode>,
    kubeconfig: PathBuf,
    timings: Mutex<Vec<(String, Duration)>>,
    done: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.cfg.prefix)
            .field("state_dir", &self.cfg.state_dir)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn write(p: &Path, s: &str) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(p, s).with_context(|| format!("writing {}", p.display()))
}

fn token() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Lab {
    /// Builds the world described by `cfg` and waits until it serves (see the module doc).
    /// On failure everything made so far is torn down again.
    pub fn up(cfg: LabConfig) -> Result<Lab> {
        if cfg.nodes == 0 || cfg.nodes > 50 {
            bail!("--nodes {}: a lab has 1 to 50 nodes", cfg.nodes);
        }
        if !cfg
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
            || cfg.prefix.is_empty()
            || cfg.prefix.len() > 40
        {
            bail!(
                "prefix `{}`: use 1-40 letters, digits and dashes (it names namespaces)",
                cfg.prefix
            );
        }
        crate::util::require_tools_for_lab(&cfg)?;
        let rec = Recorder::create(&cfg.state_dir, &cfg.prefix)?;
        let hier = cgroup::hierarchies()?;
        let base = cgroup::base_path()?;
        let cg_root = format!("{}/berth-{}", base.trim_end_matches('/'), cfg.prefix);
        let mut lab = Lab {
            kubeconfig: cfg.state_dir.join("kubeconfig"),
            cfg,
            rec,
            hier,
            cg_root,
            cp: None,
            daemons: Mutex::new(Vec::new()),
            nodes: Vec::new(),
            timings: Mutex::new(Vec::new()),
            done: false,
        };
        // Where runc and the kubelet also put the pods' cgroups (cgroup2 of a hybrid layout):
        // recorded so teardown removes it, made by them, not by the lab.
        for m in cgroup::unified_mounts() {
            let d = m.join(lab.cg_root.trim_start_matches('/'));
            lab.rec.update(|s| s.cgroups.push(d))?;
        }
        match lab.build() {
            Ok(()) => {
                lab.rec.update(|s| s.complete = true)?;
                Ok(lab)
            }
            Err(e) if lab.cfg.keep_on_failure => {
                let dir = lab.cfg.state_dir.clone();
                lab.release_all();
                lab.done = true;
                Err(e.context(format!(
                    "the half-built lab is kept in {}; remove it with `berth lab down --state-dir {}`",
                    dir.display(),
                    dir.display()
                )))
            }
            Err(e) => {
                let dir = lab.cfg.state_dir.clone();
                lab.release_all();
                lab.done = true;
                drop(lab);
                match state::teardown(&dir) {
                    Ok(t) if t.leftovers.is_empty() => Err(e),
                    Ok(t) => Err(e.context(format!(
                        "and tearing the half-built lab down left: {}",
                        t.leftovers.join("; ")
                    ))),
                    Err(te) => Err(e.context(format!("and tearing it down failed: {te:#}"))),
                }
            }
        }
    }

    fn time(&self, what: &str, t: Instant) {
        lock(&self.timings).push((what.to_string(), t.elapsed()));
    }

    /// How long each phase of `up` took. Why: the benchmark reports bring-up time.
    pub fn timings(&self) -> Vec<(String, Duration)> {
        lock(&self.timings).clone()
    }

    fn ns_name(&self, what: &str) -> String {
        format!("{}-{what}", self.cfg.prefix)
    }

    /// A handle on one of the lab's namespaces (`fabric`, `cp`, `outside`, `router`, `far`,
    /// `node1`, …) that never deletes it. Why: tests run clients "in the outside namespace".
    pub fn netns(&self, what: &str) -> Netns {
        Netns::existing(&self.ns_name(what))
    }

    /// The name prefix. Why: every namespace is `PREFIX-what`.
    pub fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    /// The kubectl v1.20.2 the lab applies deploy/ with.
    pub fn kubectl_path(&self) -> PathBuf {
        self.cfg.kube_bin.join("kubectl")
    }

    /// The lab's nodes.
    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }

    /// The state directory. Why: tests and `status` look at files in it.
    pub fn state_dir(&self) -> &Path {
        &self.cfg.state_dir
    }

    /// The host's kubeconfig (through the relay): what users and tests give kubectl.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The control plane. Why: raw API requests, logs, restarts.
    pub fn control_plane(&self) -> &KubeControlPlane {
        self.cp
            .as_ref()
            .expect("the control plane runs while the lab is up")
    }

    /// One API request (see [`KubeControlPlane::request`]).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<ApiResponse> {
        self.control_plane().request(method, path, body)
    }

    /// `birdc` on the lab router's BIRD (its control socket); returns stdout.
    ///
    /// Why: BGP tests read the router's protocols and routes as an operator would.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let ctl = self.cfg.state_dir.join("router").join("bird.ctl");
        let mut c = Command::new(tool("birdc"));
        c.arg("-s").arg(&ctl).args(args);
        let out = run_checked(&mut c)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Replaces the router's BIRD configuration with `body` (after its router id and device
    /// protocol) and reconfigures BIRD in place; `None` puts back the idle router.
    ///
    /// Why: a BGP test peers the router with the nodes, and leaves it idle again for the next.
    pub fn configure_router(&self, body: Option<&str>) -> Result<()> {
        let conf = self.cfg.state_dir.join("router").join("bird.conf");
        write(&conf, &router_conf(body.unwrap_or("")))?;
        let out = self.birdc(&["configure"])?;
        if !out.contains("Reconfigured") && !out.contains("Reconfiguration in progress") {
            bail!("birdc configure: {out}");
        }
        Ok(())
    }

    /// BIRD on the lab router peering with every node (AS 64512 to the nodes' 64513), exporting
    /// what it learns into its kernel table with ECMP, a graceful-restart helper that takes a peer
    /// back within seconds of an error; `password` on
    /// every session when given; BFD (50 ms x 3) on every session when `bfd`; for
    /// [`Lab::configure_router`].
    ///
    /// Why here: the BGP tests and `cargo xtask bench bgp` peer the same way.
    pub fn router_bgp(&self, password: Option<&str>, bfd: bool) -> String {
        let mut c = String::from(
            "protocol kernel { ipv4 { import none; export all; }; merge paths on; }\n",
        );
        // BIRD waits 60-300 s after a session error before it accepts the peer again (`error
        // wait time`); the lab's router takes it back within seconds, so a test that cuts a
        // link sees the session return.
        let mut opts = String::from(
            "graceful restart on; connect retry time 1; connect delay time 1; error wait time 1, 10;",
        );
        if let Some(p) = password {
            opts.push_str(&format!(" password \"{p}\";"));
        }
        if bfd {
            c.push_str(
                "protocol bfd { interface \"eth0\" { min rx interval 50 ms; min tx interval 50 ms; multiplier 3; }; }\n",
            );
            opts.push_str(" bfd on;");
        }
        c.push_str(&format!(
            "template bgp node {{ local {} as 64512; hold time 9; {opts} ipv4 {{ import all; export none; }}; }}\n",
            addr::ROUTER
        ));
        for (i, n) in self.nodes().iter().enumerate() {
            c.push_str(&format!(
                "protocol bgp node{} from node {{ neighbor {} as 64513; }}\n",
                i + 1,
                n.ip()
            ));
        }
        c
    }

    /// The router's next hops for `prefix` in its kernel table (what BIRD installed): one for a
    /// plain route, each of an ECMP route's.
    ///
    /// Why here: the BGP tests and `cargo xtask bench bgp` read the router alike.
    pub fn router_next_hops(&self, prefix: &str) -> std::collections::BTreeSet<String> {
        let v = self
            .netns("router")
            .ip_json(["route", "show", prefix])
            .unwrap_or(Value::Null);
        let mut out = std::collections::BTreeSet::new();
        for r in v.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                out.insert(g.to_string());
            }
            for h in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = h["gateway"].as_str() {
                    out.insert(g.to_string());
                }
            }
        }
        out
    }

    /// Cuts `node`'s LAN link, takes the time until the router's kernel table no longer has
    /// it as a next hop of `prefix` (polled every 2 ms), and puts the link back whatever
    /// happened; an error when it is still a next hop after `within`.
    ///
    /// Why here: the BFD lab tests and `cargo xtask bench bgp` measure failover alike.
    pub fn cut_and_time_next_hop_loss(
        &self,
        node: &LabNode,
        prefix: &str,
        within: Duration,
    ) -> Result<Duration> {
        node.set_lan(false)?;
        let cut = Instant::now();
        let gone = loop {
            if !self.router_next_hops(prefix).contains(node.ip()) {
                break Ok(cut.elapsed());
            }
            if cut.elapsed() > within {
                break Err(anyhow!(
                    "{} still a next hop of {prefix} {within:?} after its link was cut",
                    node.ip()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        node.set_lan(true)?;
        gone
    }

    /// `kubectl` v1.20.2 with the host kubeconfig; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new(self.cfg.kube_bin.join("kubectl"));
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY");
        let out = run_checked(&mut c)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn_opts(&self, cg: &str) -> Result<SpawnOpts> {
        let rec = &self.rec;
        let own: Vec<PathBuf> = self
            .hier
            .iter()
            .map(|h| h.mount.join(self.cg_root.trim_start_matches('/')))
            .collect();
        let procs = cgroup::create(&self.hier, cg, &mut |d| {
            let d = d.to_path_buf();
            if own.iter().any(|o| d.starts_with(o)) {
                rec.update(|s| s.cgroups.push(d))
            } else {
                // A parent above the lab's root (this process's memory cgroup path made in
                // another hierarchy) is shared with every other lab: never scanned for
                // processes, only removed when empty.
                rec.update(|s| s.cgroup_parents.push(d))
            }
        })?;
        Ok(SpawnOpts {
            parent_death: !self.cfg.detached,
            cgroup_procs: procs,
        })
    }

    fn spawn(&self, label: &str, cmd: Command, log: &Path, cg: &str) -> Result<u32> {
        let opts = self.spawn_opts(cg)?;
        let mut d = Daemon::spawn_with(label, cmd, Some(log), &opts)?;
        std::thread::sleep(Duration::from_millis(50));
        if let Some(st) = d.try_status() {
            bail!(
                "{label} exited at once ({st}); log {}:\n{}",
                log.display(),
                d.log_tail(30)
            );
        }
        let pid = d.pid();
        self.rec.process(label, pid)?;
        lock(&self.daemons).push(d);
        Ok(pid)
    }

    fn create_ns(&self, what: &str) -> Result<Netns> {
        let name = self.ns_name(what);
        self.rec.update(|s| s.namespaces.push(name.clone()))?;
        run_checked(Command::new(tool("ip")).args(["netns", "add", &name]))?;
        let ns = Netns::existing(&name);
        ns.lo_up()?;
        Ok(ns)
    }

    /// A veth from bridge `br` in the fabric into `ns` as `ifname`, with addresses.
    fn plug(
        &self,
        fabric: &Netns,
        br: &str,
        port: &str,
        ns: &Netns,
        ifname: &str,
        addrs: &[&str],
    ) -> Result<()> {
        fabric.ip([
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns.name(),
        ])?;
        fabric.ip(["link", "set", port, "master", br, "up"])?;
        ns.ip(["link", "set", ifname, "up"])?;
        for a in addrs {
            ns.add_addr(ifname, a)?;
        }
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let sd = self.cfg.state_dir.clone();
        // Images first: a wrong (dynamic) binary fails before anything is made.
        let bins = [
            self.cfg.bins.join("berth"),
            self.cfg.bins.join("berth-ipam"),
            self.cfg.bins.join("berth-ipam-direct"),
        ];
        for b in &bins {
            if !image::is_static_elf(b)? {
                bail!(
                    "{} is dynamically linked: the lab's images hold nothing but the binaries, \
                     so they must be the static release build (`cargo xtask release` prints its \
                     directory)",
                    b.display()
                );
            }
        }
        let archive = sd.join("images.tar");
        image::write_oci_archive(&bins, &image::lab_images(), &archive)?;

        // The LAN and the far segment.
        let t = Instant::now();
        let fabric = self.create_ns("fabric")?;
        for br in ["br0", "br1"] {
            fabric.add_bridge(br)?;
        }
        let cp_ns = self.create_ns("cp")?;
        self.plug(
            &fabric,
            "br0",
            "cp",
            &cp_ns,
            "eth0",
            &[
                &format!("{}/24", addr::CONTROL_PLANE),
                &format!("{}/64", addr::CONTROL_PLANE6),
            ],
        )?;
        let router = self.create_ns("router")?;
        self.plug(
            &fabric,
            "br0",
            "router",
            &router,
            "eth0",
            &[
                &format!("{}/24", addr::ROUTER),
                &format!("{}/64", addr::ROUTER6),
            ],
        )?;
        self.plug(
            &fabric,
            "br1",
            "router-far",
            &router,
            "eth1",
            &[
                &format!("{}/24", addr::ROUTER_FAR),
                &format!("{}/64", addr::ROUTER_FAR6),
            ],
        )?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let outside = self.create_ns("outside")?;
        self.plug(
            &fabric,
            "br0",
            "outside",
            &outside,
            "eth0",
            &[
                &format!("{}/24", addr::OUTSIDE),
                &format!("{}/64", addr::OUTSIDE6),
            ],
        )?;
        let far = self.create_ns("far")?;
        self.plug(
            &fabric,
            "br1",
            "far",
            &far,
            "eth0",
            &[&format!("{}/24", addr::FAR), &format!("{}/64", addr::FAR6)],
        )?;
        far.ip(["route", "add", "default", "via", addr::ROUTER_FAR])?;
        far.ip(["-6", "route", "add", "default", "via", addr::ROUTER_FAR6])?;
        for ns in [&cp_ns, &outside] {
            ns.ip(["route", "add", addr::FAR_NET, "via", addr::ROUTER])?;
            ns.ip(["-6", "route", "add", addr::FAR_NET6, "via", addr::ROUTER6])?;
        }
        self.time("namespaces and LAN", t);

        // The router: BIRD 2 with a control socket, idle until something peers with it.
        let rdir = sd.join("router");
        write(&rdir.join("bird.conf"), &router_conf(""))?;
        let mut c = crate::util::netns_command(Some(router.name()), tool("bird"));
        c.arg("-f")
            .arg("-c")
            .arg(rdir.join("bird.conf"))
            .arg("-s")
            .arg(rdir.join("bird.ctl"))
            .arg("-P")
            .arg(rdir.join("bird.pid"));
        let cg_router = format!("{}/router", self.cg_root);
        self.spawn("bird@router", c, &rdir.join("bird.log"), &cg_router)?;

        // The control plane on the LAN.
        let t = Instant::now();
        let mut tokens = Vec::new();
        let mut b = KubeControlPlane::builder()
            .bin_dir(&self.cfg.kube_bin)
            .netns(cp_ns.name())
            .dir(sd.join("cp"))
            .port(addr::API_PORT)
            .advertise(addr::CONTROL_PLANE)
            .service_cidr(addr::SERVICE_CIDR)
            .scheduler(true)
            .real_nodes(true)
            .start_timeout(self.cfg.timeout)
            .spawn_opts(self.spawn_opts(&format!("{}/cp", self.cg_root))?)
            // Node IPAM is Berth's; node lifecycle stays on (real kubelets report).
            .controllers("*,-nodeipam");
        for i in 1..=self.cfg.nodes {
            let tk = token()?;
            let user = format!("system:node:{}", self.ns_name(&format!("node{i}")));
            b = b.user(&tk, &user, &["system:nodes"]);
            tokens.push(tk);
        }
        let proxy_token = token()?;
        b = b.user(&proxy_token, "system:kube-proxy", &[]);
        let cp = b.start()?;
        for pid in cp.pids() {
            self.rec.process("control-plane", pid)?;
        }
        let ca = cp
            .ca_pem()
            .map(Path::to_path_buf)
            .context("the control plane has no CA")?;
        self.cp = Some(cp);
        self.time("control plane", t);

        // The host's way in: 127.0.0.1:PORT -> unix socket -> cp's 127.0.0.1:6443.
        let sock = sd.join("api.sock");
        let cg_cp = format!("{}/cp", self.cg_root);
        let mut c = crate::util::netns_command(Some(cp_ns.name()), tool("socat"));
        c.arg(format!(
            "UNIX-LISTEN:{},fork,unlink-early,mode=600",
            sock.display()
        ))
        .arg(format!("TCP:127.0.0.1:{}", addr::API_PORT));
        self.spawn("relay@cp", c, &sd.join("relay-cp.log"), &cg_cp)?;
        let port = free_ports(1)?[0];
        let mut c = Command::new(tool("socat"));
        c.arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!("UNIX-CONNECT:{}", sock.display()));
        self.spawn("relay@host", c, &sd.join("relay-host.log"), &cg_cp)?;
        self.write_host_kubeconfig(port, &ca)?;

        // The nodes.
        let t = Instant::now();
        for i in 1..=self.cfg.nodes {
            let n = self.start_node(i, &fabric, &ca, &tokens[i - 1], &proxy_token, &archive)?;
            self.nodes.push(n);
        }
        self.time("nodes started", t);
        self.rec.update(|s| {
            s.info.insert("kubeconfig".into(), json!(self.kubeconfig));
            s.info.insert("apiPort".into(), json!(port));
            s.info.insert(
                "nodes".into(),
                json!(self
                    .nodes
                    .iter()
                    .map(|n| json!({"name": n.name(), "ip": n.ip()}))
                    .collect::<Vec<_>>()),
            );
        })?;
        let t = Instant::now();
        self.wait_nodes_registered()?;
        self.time("nodes registered", t);

        // Berth, as users deploy it.
        let t = Instant::now();
        match self.cfg.deploy.clone() {
            Deploy::Nothing => {}
            Deploy::Kustomize(dir) => self.apply_kustomize(&dir)?,
            Deploy::Embedded => {
                let dir = sd.join("deploy");
                crate::deploy::write_tree(&dir)?;
                self.apply_kustomize(&dir.join("overlays/lab"))?;
            }
        }
        if !matches!(self.cfg.deploy, Deploy::Nothing) {
            self.wait_ready()?;
        }
        self.time("Berth deployed, nodes Ready, agents serving", t);
        self.time("total", t0);
        Ok(())
    }

    fn write_host_kubeconfig(&self, port: u16, ca: &Path) -> Result<()> {
        let ca_data = std::fs::read(ca)?;
        let token = self.control_plane().token().to_string();
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {p}\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: {p}-admin\n  user:\n    token: {token}\n\
             contexts:\n- name: {p}\n  context:\n    cluster: {p}\n    user: {p}-admin\n    namespace: default\n\
             current-context: {p}\n",
            p = self.cfg.prefix,
            ca = crate::kube::base64(&ca_data),
        );
        write(&self.kubeconfig, &cfg)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.kubeconfig, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    fn start_node(
        &self,
        i: usize,
        fabric: &Netns,
        ca: &Path,
        token: &str,
        proxy_token: &str,
        archive: &Path,
    ) -> Result<LabNode> {
        let name = self.ns_name(&format!("node{i}"));
        let ns = self.create_ns(&format!("node{i}"))?;
        self.plug(
            fabric,
            "br0",
            &format!("node{i}"),
            &ns,
            "eth0",
            &[
                &format!("{}/24", addr::node(i)),
                &format!("{}/64", addr::node6(i)),
            ],
        )?;
        // No default route. Locally sent packets are routed before kube-proxy's DNAT, so the
        // ClusterIP range needs a route of its own (on the LAN; DNAT picks the real target).
        ns.ip(["route", "add", addr::SERVICE_CIDR, "dev", "eth0"])?;
        // The far segment through the router (the return path to `far`).
        ns.ip(["route", "add", addr::FAR_NET, "via", addr::ROUTER])?;
        ns.ip(["-6", "route", "add", addr::FAR_NET6, "via", addr::ROUTER6])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // A link cut (`set_lan`) keeps the node's IPv6 addresses, as IPv4 ones are kept.
        ns.sysctl("net.ipv6.conf.eth0.keep_addr_on_down", "1")?;
        let cg = format!("{}/{name}", self.cg_root);
        let spec = NodeSpec {
            name: name.clone(),
            ip: addr::node(i),
            dir: self.cfg.state_dir.join("nodes").join(&name),
            server: format!("https://{}:{}", addr::CONTROL_PLANE, addr::API_PORT),
            cgroup_root: cg.clone(),
            pause_image: image::PAUSE_IMAGE.into(),
            ca: ca.to_path_buf(),
            service_cidr: addr::SERVICE_CIDR.into(),
            cluster_cidr: addr::POD_CIDR.into(),
        };
        for d in node::NODE_DIRS {
            std::fs::create_dir_all(spec.backing(d))?;
        }
        // The distribution's CNI plugins, as a node's package would install them.
        let bin = spec.backing("/opt/cni/bin");
        for e in std::fs::read_dir("/usr/lib/cni")
            .context("reading /usr/lib/cni")?
            .flatten()
        {
            let _ = std::os::unix::fs::symlink(e.path(), bin.join(e.file_name()));
        }
        write(
            &spec.dir.join("resolv.conf"),
            "# berth lab: no DNS on the lab's nodes\n",
        )?;
        let mut script = node::mount_script(&spec)?;
        for (key, val) in node::KUBELET_SYSCTLS {
            let f = spec.dir.join("sysctl").join(key.replace('/', "."));
            write(&f, &format!("{val}\n"))?;
            script.push_str(&format!(
                "mount -n --bind '{}' '/proc/sys/{key}'\n",
                f.display()
            ));
        }
        // The node's persistent mount namespace.
        let mnt = self.cfg.state_dir.join("ns").join(format!("{name}.mnt"));
        std::fs::create_dir_all(mnt.parent().unwrap_or(Path::new("/")))?;
        std::fs::write(&mnt, "")?;
        let m = mnt.clone();
        self.rec.update(|s| s.mount_namespaces.push(m))?;
        run_checked(
            Command::new(tool("unshare"))
                .arg(format!("--mount={}", mnt.display()))
                .args(["--propagation", "private", "true"]),
        )?;
        run_checked(
            Command::new(tool("nsenter"))
                .arg(format!("--mount={}", mnt.display()))
                .args(["--", "sh", "-c", &script]),
        )
        .context("bind-mounting the node's directories")?;
        let node = LabNode {
            spec: spec.clone(),
            index: i,
            mount_ns: mnt,
            cgroup: cg.clone(),
        };
        write(
            &spec.dir.join("containerd.toml"),
            &node::containerd_config(&spec),
        )?;
        write(&spec.dir.join("kubelet.yaml"), &node::kubelet_config(&spec))?;
        write(
            &spec.dir.join("kubelet.kubeconfig"),
            &node::token_kubeconfig(&spec.server, ca, token, &format!("system:node:{name}")),
        )?;
        write(
            &spec.dir.join("kube-proxy.yaml"),
            &node::kube_proxy_config(&spec),
        )?;
        write(
            &spec.dir.join("kube-proxy.kubeconfig"),
            &node::token_kubeconfig(&spec.server, ca, proxy_token, "system:kube-proxy"),
        )?;
        std::fs::create_dir_all(spec.dir.join("log"))?;
        self.start_node_processes(&node, Some(archive))?;
        Ok(node)
    }

    /// Starts containerd (importing the images from `archive` if given), kubelet and
    /// kube-proxy on `node`, as a machine's init does at boot.
    fn start_node_processes(&self, node: &LabNode, archive: Option<&Path>) -> Result<()> {
        let spec = &node.spec;
        let name = &spec.name;
        let sys_cg = format!("{}/system", node.cgroup);
        let logs = spec.dir.join("log");
        let mut c = node.command(tool("containerd"));
        c.arg("--config").arg(spec.dir.join("containerd.toml"));
        self.spawn(
            &format!("containerd@{name}"),
            c,
            &logs.join("containerd.log"),
            &sys_cg,
        )?;
        let sock = spec.containerd_socket_on_host();
        crate::util::wait_for(
            &format!("containerd on {name} ({})", sock.display()),
            self.cfg.timeout,
            Duration::from_millis(50),
            || std::os::unix::net::UnixStream::connect(&sock).ok(),
        )?;
        if let Some(archive) = archive {
            let mut c = node.command(tool("ctr"));
            c.args([
                "--address",
                spec.containerd_socket(),
                "-n",
                "k8s.io",
                "images",
                "import",
            ])
            .args(["--snapshotter", "overlayfs"])
            .arg(archive);
            run_checked(&mut c)
                .with_context(|| format!("importing the lab's images into {name}"))?;
        }
        let mut c = node.command(self.cfg.kube_bin.join("kubelet"));
        c.args(node::kubelet_args(spec));
        self.spawn(
            &format!("kubelet@{name}"),
            c,
            &logs.join("kubelet.log"),
            &sys_cg,
        )?;
        let mut c = node.command(self.cfg.kube_bin.join("kube-proxy"));
        c.arg(format!(
            "--config={}",
            spec.dir.join("kube-proxy.yaml").display()
        ))
        .arg("--v=1")
        .arg("--logtostderr=true");
        self.spawn(
            &format!("kube-proxy@{name}"),
            c,
            &logs.join("kube-proxy.log"),
            &sys_cg,
        )?;
        Ok(())
    }

    /// Powers node `i` (1-based) on again after [`Lab::power_off`]: containerd, kubelet and
    /// kube-proxy start with the node's files as they were (its images, its CNI configuration);
    /// the kubelet brings back the DaemonSet's pods.
    pub fn power_on(&self, i: usize) -> Result<()> {
        let n = self
            .nodes
            .get(i.wrapping_sub(1))
            .with_context(|| format!("no node {i}"))?;
        self.start_node_processes(n, None)
    }

    fn node_log_tails(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            for l in ["kubelet", "containerd"] {
                let p = n.spec.dir.join("log").join(format!("{l}.log"));
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                s.push_str(&format!(
                    "--- {} {l} ({}):\n{}\n",
                    n.name(),
                    p.display(),
                    lines[lines.len().saturating_sub(8)..].join("\n")
                ));
            }
        }
        s
    }

    fn get(&self, path: &str) -> Result<Value> {
        self.request("GET", path, None)?.ok()
    }

    fn wait_nodes_registered(&self) -> Result<()> {
        let want: Vec<String> = self.nodes.iter().map(|n| n.name().to_string()).collect();
        self.wait("every node registered", || {
            let v = self.get("/api/v1/nodes").ok()?;
            let have: Vec<&str> = v["items"]
                .as_array()?
                .iter()
                .filter_map(|n| n["metadata"]["name"].as_str())
                .collect();
            want.iter()
                .all(|w| have.contains(&w.as_str()))
                .then_some(())
        })
    }

    fn wait(&self, what: &str, f: impl FnMut() -> Option<()>) -> Result<()> {
        crate::util::wait_for(what, self.cfg.timeout, Duration::from_millis(250), f)
            .map_err(|e| anyhow!("{e:#}\n{}", self.node_log_tails()))
    }

    /// `kubectl apply -k DIR`. Why: deploy/ is applied exactly as users apply it.
    pub fn apply_kustomize(&self, dir: &Path) -> Result<()> {
        let d = dir.display().to_string();
        self.kubectl(&["apply", "-k", &d])
            .with_context(|| format!("kubectl apply -k {d}"))
            .map(|_| ())
    }

    /// Waits until every node is Ready, Berth's agent DaemonSet has a Ready pod on every node,
    /// every agent answers on its socket, and the controller Deployment is available.
    pub fn wait_ready(&self) -> Result<()> {
        let n = self.nodes.len() as u64;
        self.wait("every node Ready", || {
            let v = self.get("/api/v1/nodes").ok()?;
            let ready = v["items"]
                .as_array()?
                .iter()
                .filter(|node| {
                    node["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count() as u64;
            (ready >= n).then_some(())
        })?;
        self.wait("Berth's agent Ready on every node", || {
            let v = self
                .get(
                    "/apis/apps/v1/daemonsets?labelSelector=app.kubernetes.io%2Fname%3Dberth-agent",
                )
                .ok()?;
            let ds = v["items"].as_array()?.first()?.clone();
            (ds["status"]["numberReady"].as_u64()? >= n).then_some(())
        })?;
        for node in &self.nodes {
            let s = node.agent_socket();
            self.wait(
                &format!("the agent on {} to answer on {}", node.name(), s.display()),
                || agent_answers(&s).then_some(()),
            )?;
        }
        self.wait("Berth's controller available", || {
            let v = self
                .get("/apis/apps/v1/deployments?labelSelector=app.kubernetes.io%2Fname%3Dberth-controller")
                .ok()?;
            let d = v["items"].as_array()?.first()?.clone();
            (d["status"]["availableReplicas"].as_u64()? >= 1).then_some(())
        })
    }

    /// Powers node `i` (1-based) off: every process in its cgroup (containerd, kubelet,
    /// kube-proxy, the shims and every pod, Berth's agent among them) is killed. Its namespace,
    /// mounts and files stay, as a machine's disk does.
    pub fn power_off(&self, i: usize) -> Result<()> {
        let n = self
            .nodes
            .get(i.wrapping_sub(1))
            .with_context(|| format!("no node {i}"))?;
        let dirs: Vec<PathBuf> = self
            .hier
            .iter()
            .map(|h| h.mount.join(n.cgroup.trim_start_matches('/')))
            .collect();
        let me = std::process::id();
        crate::util::wait_for(
            &format!("every process of {} to die", n.name()),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let pids: Vec<u32> = dirs
                    .iter()
                    .flat_map(|d| cgroup::pids_below(d))
                    .filter(|p| *p != me)
                    .collect();
                for p in &pids {
                    // SAFETY: kill(2) on processes inside this lab's own cgroup.
                    unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
                }
                pids.is_empty().then_some(())
            },
        )?;
        // Reap the daemons of ours that died (their handles stay, exited).
        for d in lock(&self.daemons).iter_mut() {
            let _ = d.try_status();
        }
        Ok(())
    }

    fn release_all(&mut self) {
        for d in lock(&self.daemons).drain(..) {
            let _ = d.release();
        }
        if let Some(cp) = self.cp.take() {
            let _ = cp.release();
        }
    }

    /// Hands the world over to `berth lab down`: its processes keep running after this process
    /// exits. Why: `berth lab up` returns while the lab runs.
    pub fn detach(mut self) {
        self.release_all();
        self.done = true;
    }

    /// Tears the world down now (see [`state::teardown`]).
    pub fn down(mut self) -> Result<state::Teardown> {
        self.release_all();
        self.done = true;
        state::teardown(&self.cfg.state_dir)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.release_all();
        match state::teardown(&self.cfg.state_dir) {
            Ok(t) if t.leftovers.is_empty() => {}
            Ok(t) => eprintln!("berth-lab: teardown left: {}", t.leftovers.join("; ")),
            Err(e) => eprintln!(
                "berth-lab: teardown of {}: {e:#}",
                self.cfg.state_dir.display()
            ),
        }
    }
}

/// Whether a Berth agent answers an admin snapshot on `socket`.
///
/// Why: "the agent serves" means a round trip through its socket, not a file that exists.
pub fn agent_answers(socket: &Path) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"{\"admin\":\"snapshot\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    if BufReader::new(s).read_line(&mut line).is_err() {
        return false;
    }
    serde_json::from_str::<Value>(&line)
        .map(|v| v.get("bindings").is_some() && v.get("error").is_none())
        .unwrap_or(false)
}

/// The PIDs of every `berth agent` process on this machine, each with its `NODE_NAME`.
///
/// Why: the lab's agents run in containers, so tests and benchmarks find them in `/proc`
/// (to kill one like a crash, or to read its memory), by the command line and the node name
/// the DaemonSet gives them.
pub fn agent_pids() -> Vec<(u32, Option<String>)> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if !(args.len() > 1 && args[0].ends_with(b"berth") && args[1] == b"agent") {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let node = env
            .split(|b| *b == 0)
            .find_map(|v| v.strip_prefix(b"NODE_NAME"))
            .and_then(|v| v.strip_prefix(b"="))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        out.push((pid, node));
    }
    out.sort();
    out
}
