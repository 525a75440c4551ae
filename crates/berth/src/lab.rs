//! `berth lab`: a small world of network namespaces to show and try Berth on one machine.
//!
//! `berth lab demo` plays a node with a few pods: a node namespace, pod namespaces attached to a
//! bridge by Debian's `bridge` CNI plugin, `berth-ipam` as its IPAM talking to a `berth agent` on the
//! embedded ledger. It prints each pod's addresses, pings between pods, shows the ledger with the
//! inspection commands, and cleans everything up (unless `--keep`). Only 198.18.0.0/15 and
//! 2001:db8::/32 are used, inside namespaces it creates.
//!
//! `berth lab up|down|status` run the world of real nodes from `berth-lab`: the tests build the
//! same world with the same code. `berth lab pause|echo|probe` are the programs of the lab's
//! images.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `berth lab` subcommands.
#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// A node with pods on a bridge, addressed by berth-ipam through the agent on the embedded ledger.
    Demo(DemoArgs),
    /// Bring up a cluster of real nodes (containerd, kubelet, kube-proxy) with Berth deployed
    /// from deploy/, in network namespaces of this machine.
    Up(UpArgs),
    /// Remove everything `berth lab up` made (safe to run twice, and after a crash of `up`).
    Down(StateArgs),
    /// Say what of the lab runs.
    Status(StateArgs),
    /// The pod sandbox of the lab's images: wait for SIGTERM, reap children.
    Pause,
    /// The lab's test server: HTTP, TCP and UDP answers naming the peer address and the pod.
    Echo(EchoArgs),
    /// Ask an echo server once: http://ADDR:PORT/, tcp://ADDR:PORT or udp://ADDR:PORT.
    Probe(ProbeArgs),
}

/// Options of `berth lab up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Prefix of the namespaces (`lab-node1`, `lab-outside`, …) and cgroups.
    #[arg(long, default_value = berth_lab::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Where the lab keeps its state, configs, logs and the kubeconfig.
    #[arg(long, default_value = berth_lab::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// A kustomization to apply instead of deploy/overlays/lab as built into this binary.
    #[arg(long)]
    pub deploy: Option<PathBuf>,
    /// Directory of the Kubernetes v1.20.2 binaries (default: hack/kube-build.sh's cache).
    #[arg(long)]
    pub kube_bin: Option<PathBuf>,
    /// Bound of each wait, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// When `up` fails, leave what it made (logs under the state dir) for `berth lab down`.
    #[arg(long)]
    pub keep_on_failure: bool,
}

/// The state directory of `berth lab down|status`.
#[derive(Args, Debug)]
pub struct StateArgs {
    /// Where `berth lab up` keeps its state.
    #[arg(long, default_value = berth_lab::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// Options of `berth lab echo`.
#[derive(Args, Debug)]
pub struct EchoArgs {
    /// HTTP port.
    #[arg(long, default_value_t = 8080)]
    pub http: u16,
    /// TCP port (the report, then every line echoed).
    #[arg(long, default_value_t = 9000)]
    pub tcp: u16,
    /// UDP port.
    #[arg(long, default_value_t = 9000)]
    pub udp: u16,
    /// Seconds to go on serving after SIGTERM (a slowly draining pod).
    #[arg(long, default_value_t = 0)]
    pub drain: u64,
}

/// Options of `berth lab probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// http://ADDR:PORT[/path], tcp://ADDR:PORT or udp://ADDR:PORT (lab addresses only).
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
    /// Source address to send from.
    #[arg(long)]
    pub source: Option<std::net::IpAddr>,
}

/// Options of `berth lab demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the embedded ledger lives (wiped at start).
    #[arg(long, default_value = "/var/lib/berth/demo")]
    pub data_dir: PathBuf,
    /// Number of pods.
    #[arg(long, default_value_t = 4)]
    pub pods: usize,
    /// Directory of Debian's CNI plugins.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_dir: PathBuf,
    /// Leave the namespaces and the agent running.
    #[arg(long)]
    pub keep: bool,
}

/// Run a lab command.
pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Demo(a) => demo(a),
        LabCommand::Up(a) => up(a),
        LabCommand::Down(a) => down(a),
        LabCommand::Status(a) => status(a),
        LabCommand::Pause => berth_lab::programs::pause(),
        LabCommand::Echo(a) => berth_lab::programs::echo(berth_lab::programs::EchoPorts {
            http: a.http,
            tcp: a.tcp,
            udp: a.udp,
            drain: Duration::from_secs(a.drain),
        }),
        LabCommand::Probe(a) => {
            let answer =
                berth_lab::programs::probe(&a.url, Duration::from_secs(a.timeout), a.source)?;
            println!("{answer}");
            Ok(())
        }
    }
}

fn up(a: UpArgs) -> anyhow::Result<()> {
    let mut cfg = berth_lab::LabConfig::user(own_dir()?);
    cfg.nodes = a.nodes;
    cfg.prefix = a.prefix;
    cfg.state_dir = a.state_dir;
    cfg.timeout = Duration::from_secs(a.timeout);
    cfg.keep_on_failure = a.keep_on_failure;
    if let Some(k) = a.kube_bin {
        cfg.kube_bin = k;
    }
    if let Some(d) = a.deploy {
        cfg.deploy = berth_lab::Deploy::Kustomize(d);
    }
    println!(
        "== berth lab up: {} nodes, prefix {}, state in {}",
        cfg.nodes,
        cfg.prefix,
        cfg.state_dir.display()
    );
    let lab = berth_lab::Lab::up(cfg)?;
    for (what, d) in lab.timings() {
        println!("  {what}: {:.1} s", d.as_secs_f64());
    }
    print!("{}", usage(&lab));
    lab.detach();
    Ok(())
}

/// How to use a running lab: printed by `up`.
fn usage(lab: &berth_lab::Lab) -> String {
    use berth_lab::addr;
    let kc = lab.kubeconfig().display();
    let kubectl = lab.kubectl_path();
    let kubectl = kubectl.display();
    let p = lab.prefix();
    let mut s = format!(
        "\n== the lab is up\n\
         kubectl (v1.20.2):  {kubectl} --kubeconfig {kc} get nodes -o wide\n\
         \x20                   (or: export KUBECONFIG={kc})\n\
         control plane:      {p}-cp, apiserver https://{}:{} (host: through the relay in the kubeconfig)\n\
         nodes (eth0 on the LAN {}, no route out):\n",
        addr::CONTROL_PLANE,
        addr::API_PORT,
        addr::LAN,
    );
    for n in lab.nodes() {
        s.push_str(&format!("  {:<20} {}\n", n.name(), n.ip()));
    }
    s.push_str(&format!(
        "outside client:     {p}-outside {} (on the LAN)\n\
         router:             {p}-router {} / {} (BIRD 2: birdc -s {}/router/bird.ctl show status)\n\
         far client:         {p}-far {} (only through the router)\n\
         Services:           {} (ClusterIP); pods: {}\n\
         try:                ip netns exec {p}-outside curl http://NODE-IP:NODEPORT/\n\
         images:             {} {} {} (imagePullPolicy: Never)\n\
         remove it all:      berth lab down{}\n",
        addr::OUTSIDE,
        addr::ROUTER,
        addr::ROUTER_FAR,
        lab.state_dir().display(),
        addr::FAR,
        addr::SERVICE_CIDR,
        addr::POD_CIDR,
        berth_lab::image::BERTH_IMAGE,
        berth_lab::image::PAUSE_IMAGE,
        berth_lab::image::ECHO_IMAGE,
        if lab.state_dir() == Path::new(berth_lab::DEFAULT_STATE_DIR) {
            String::new()
        } else {
            format!(" --state-dir {}", lab.state_dir().display())
        },
    ));
    s
}

fn down(a: StateArgs) -> anyhow::Result<()> {
    let Some(st) = berth_lab::state::read(&a.state_dir)? else {
        if a.state_dir.exists() {
            std::fs::remove_dir_all(&a.state_dir)?;
        }
        println!("no lab in {}: nothing to remove", a.state_dir.display());
        return Ok(());
    };
    println!(
        "== berth lab down: {} namespaces, {} processes recorded, {} cgroups",
        st.namespaces.len(),
        st.processes.len(),
        st.cgroups.len()
    );
    let t = berth_lab::state::teardown(&a.state_dir)?;
    if !t.leftovers.is_empty() {
        bail!(
            "the lab is partly removed; left behind: {}\nrun `berth lab down` again once that is fixed",
            t.leftovers.join("; ")
        );
    }
    println!(
        "removed: {} processes killed, {} gone",
        t.killed,
        a.state_dir.display()
    );
    Ok(())
}

fn status(a: StateArgs) -> anyhow::Result<()> {
    let Some(st) = berth_lab::state::read(&a.state_dir)? else {
        println!("no lab in {}", a.state_dir.display());
        return Ok(());
    };
    println!(
        "lab `{}` in {} ({}), built by pid {}",
        st.prefix,
        a.state_dir.display(),
        if st.complete {
            "complete"
        } else {
            "INCOMPLETE: `berth lab down` removes it"
        },
        st.owner_pid
    );
    let alive = st
        .processes
        .iter()
        .filter(|p| berth_lab::state::alive(p))
        .count();
    println!("processes: {alive} of {} running", st.processes.len());
    for p in &st.processes {
        if !berth_lab::state::alive(p) {
            println!("  not running: {} (pid {})", p.label, p.pid);
        }
    }
    let ns_ok = st
        .namespaces
        .iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .count();
    println!(
        "namespaces: {ns_ok} of {} present: {}",
        st.namespaces.len(),
        st.namespaces.join(" ")
    );
    let kc = a.state_dir.join("kubeconfig");
    if kc.exists() {
        let kubectl = berth_lab::kube_bin_dir().join("kubectl");
        println!("kubeconfig: {}", kc.display());
        for args in [
            &["get", "nodes", "-o", "wide"][..],
            &["get", "pods", "-A", "-o", "wide"][..],
        ] {
            let out = Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kc.display()))
                .args(["--request-timeout=5s"])
                .args(args)
                .output();
            match out {
                Ok(o) => print!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => println!("  {}: {e}", kubectl.display()),
            }
        }
    }
    Ok(())
}

/// Everything the demo created, torn down on drop unless kept.
struct World {
    namespaces: Vec<String>,
    agent: Option<Child>,
    keep: bool,
}

impl Drop for World {
    fn drop(&mut self) {
        if self.keep {
            println!(
                "\nkept: namespaces {} and agent pid {:?}; remove with: ip -all netns delete (or ip netns delete NAME) and kill the agent",
                self.namespaces.join(" "),
                self.agent.as_ref().map(Child::id)
            );
            return;
        }
        if let Some(mut a) = self.agent.take() {
            stop_child(&mut a, AGENT_STOP_GRACE);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// How long the agent gets to remove its socket after SIGTERM before it is killed.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);

/// Stop a child of ours: SIGTERM, wait up to `grace`, then SIGKILL and reap it.
///
/// Why: the signal is sent by this process itself (no external `kill`, which minimal systems
/// lack), and no wait is unbounded: a child that ignores SIGTERM is killed, not waited on forever.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a PID we spawned and have not reaped yet, so it cannot name another
    // process; it touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        eprintln!(
            "warning: could not send SIGTERM to the agent (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let t = Instant::now();
    while t.elapsed() < grace {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!("warning: waiting for the agent (pid {pid}): {e}");
                break;
            }
        }
    }
    eprintln!(
        "warning: the agent (pid {pid}) did not stop within {grace:?} of SIGTERM: killing it"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn own_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the berth binary")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// A container runtime's view of one network: which plugin, where, with what configuration.
struct Runtime<'a> {
    node: &'a str,
    cni_path: &'a str,
    plugin: &'a Path,
    conf: &'a serde_json::Value,
}

impl Runtime<'_> {
    /// Run the plugin as a runtime does, inside the node namespace.
    fn exec(
        &self,
        command: &str,
        cid: &str,
        pod_ns: &str,
        args: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let (node, cni_path, plugin, conf) = (self.node, self.cni_path, self.plugin, self.conf);
        let mut child = Command::new("ip")
            .args(["netns", "exec", node])
            .arg(plugin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path)
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running the bridge plugin")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{command} {cid}: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if out.stdout.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

fn berth(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(std::env::current_exe()?).args(args).status()?;
    if !status.success() {
        bail!("berth {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let bridge = a.cni_dir.join("bridge");
    if !bridge.exists() {
        bail!(
            "{} is missing: install Debian's containernetworking-plugins (hack/install-deps.sh does)",
            bridge.display()
        );
    }
    let dir = own_dir()?;
    if !dir.join("berth-ipam").exists() {
        bail!(
            "berth-ipam is not next to {}: build both binaries",
            dir.display()
        );
    }
    let _ = std::fs::remove_dir_all(&a.data_dir);
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let socket = a.data_dir.join("agent.sock");
    let prefix = format!("berth-demo-{}", std::process::id());
    let mut world = World {
        namespaces: vec![],
        agent: None,
        keep: a.keep,
    };

    println!("== a node namespace and {} pod namespaces", a.pods);
    let node = format!("{prefix}-node");
    ip(&["netns", "add", &node])?;
    world.namespaces.push(node.clone());
    ip(&["-n", &node, "link", "set", "lo", "up"])?;
    let pods: Vec<String> = (1..=a.pods).map(|i| format!("{prefix}-pod{i}")).collect();
    for p in &pods {
        ip(&["netns", "add", p])?;
        world.namespaces.push(p.clone());
    }

    println!(
        "== berth agent on the embedded ledger {}",
        a.data_dir.display()
    );
    let log = std::fs::File::create(a.data_dir.join("agent.log"))?;
    let agent = Command::new(std::env::current_exe()?)
        .args(["agent", "--node", "demo-node", "--socket"])
        .arg(&socket)
        .arg("--ledger")
        .arg(format!("embedded:{}", a.data_dir.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting berth agent")?;
    world.agent = Some(agent);
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!(
                "the agent did not start; see {}",
                a.data_dir.join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "demo", "type": "bridge",
        "bridge": "berth0", "isGateway": true, "ipMasq": false,
        "ipam": {
            "type": "berth-ipam",
            "ranges": [
                [{"subnet": "198.18.0.0/24", "gateway": "198.18.0.1",
                  "rangeStart": "198.18.0.64", "rangeEnd": "198.18.0.250",
                  "fixedStart": "198.18.0.10", "fixedEnd": "198.18.0.19"}],
                [{"subnet": "2001:db8:42::/64", "gateway": "2001:db8:42::1",
                  "rangeStart": "2001:db8:42::100", "rangeEnd": "2001:db8:42::1ff"}]
            ],
            "blockSize": 28,
            "agentSocket": socket,
            // The agent's ledger; without an agent the plugin would allocate on it directly.
            "ledger": "embedded",
            "dataDir": a.data_dir,
        }
    });
    let cni_path = format!("{}:{}", dir.display(), a.cni_dir.display());
    let runtime = Runtime {
        node: &node,
        cni_path: &cni_path,
        plugin: &bridge,
        conf: &conf,
    };
    println!("== ADD: Debian's bridge plugin with berth-ipam (the last pod asks for 198.18.0.15)");
    let mut results = vec![];
    for (i, p) in pods.iter().enumerate() {
        let args = if i + 1 == pods.len() {
            "IgnoreUnknown=1;IP=198.18.0.15"
        } else {
            "IgnoreUnknown=1"
        };
        let cid = format!("demo-ctr-{}", i + 1);
        let t = Instant::now();
        let r = runtime.exec("ADD", &cid, p, args)?;
        let ips: Vec<String> = r["ips"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|i| i["address"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        println!("  {p}: {} ({:?})", ips.join(" "), t.elapsed());
        results.push((cid, p.clone(), ips));
    }
    println!("== the pods' eth0 as the kernel has it");
    for p in &pods {
        print!(
            "  {p}: {}",
            ip(&["-n", p, "-br", "addr", "show", "dev", "eth0"])?
        );
    }
    if let (Some(a0), Some(a1)) = (results.first(), results.get(1)) {
        let target = a1.2[0].split('/').next().unwrap_or_default().to_string();
        let ok = Command::new("ip")
            .args([
                "netns", "exec", &a0.1, "ping", "-c", "1", "-W", "2", &target,
            ])
            .stdout(Stdio::null())
            .status()?
            .success();
        println!(
            "== ping {} -> {target}: {}",
            a0.1,
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            bail!("pod {} cannot reach pod {} at {target}", a0.1, a1.1);
        }
    }
    let ledger = format!("embedded:{}", a.data_dir.display());
    let sock = socket.display().to_string();
    for what in ["pools", "blocks", "bindings", "audit"] {
        println!("== berth {what} (read through the agent, which holds the ledger)");
        berth(&[what, "--ledger", &ledger, "--socket", &sock])?;
    }
    if a.keep {
        return Ok(());
    }
    println!("== DEL every pod");
    for (cid, p, _) in &results {
        runtime.exec("DEL", cid, p, "IgnoreUnknown=1")?;
    }
    berth(&["audit", "--ledger", &ledger, "--socket", &sock])?;
    println!("== done: namespaces and agent removed");
    Ok(())
}
