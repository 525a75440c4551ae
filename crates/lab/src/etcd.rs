//! etcd 3.4 members and clusters on free loopback ports, optionally with mutual TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::process::{Daemon, SpawnOpts};
use crate::tls::TlsFiles;
use crate::util::{
    free_ports, in_netns, netns_command, run_checked, tool, unique_name, wait_for, Workdir,
};

/// How an etcd cluster is started. Build with [`EtcdCluster::builder`].
///
/// Why: most tests want the defaults (`EtcdCluster::start(3)`), a few need TLS or faster
/// elections; one builder keeps both short.
#[derive(Debug, Clone)]
pub struct EtcdBuilder {
    members: usize,
    tls: bool,
    tls_files: Option<TlsFiles>,
    heartbeat_ms: u32,
    election_ms: u32,
    start_timeout: Duration,
    extra_args: Vec<String>,
    netns: Option<String>,
    dir: Option<PathBuf>,
    spawn: SpawnOpts,
}

impl Default for EtcdBuilder {
    fn default() -> Self {
        EtcdBuilder {
            members: 1,
            tls: false,
            tls_files: None,
            heartbeat_ms: 100,
            election_ms: 1000,
            start_timeout: Duration::from_secs(60),
            extra_args: Vec::new(),
            netns: None,
            dir: None,
            spawn: SpawnOpts::default(),
        }
    }
}

impl EtcdBuilder {
    /// Number of members (1 or 3 are typical; any n >= 1 works). Why: quorum tests need 3.
    pub fn members(mut self, n: usize) -> Self {
        self.members = n;
        self
    }

    /// Serve clients over `https://` with client-certificate auth against a fresh test CA.
    ///
    /// Why: the ledger's etcd backend must be tested with the TLS settings of real clusters.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Serve clients over `https://` with client-certificate auth using these files (for
    /// example from [`TlsFiles::generate_openssl`]) instead of a fresh rcgen PKI.
    ///
    /// Why: certificates made by another tool (openssl, as operators make them) show what a
    /// client accepts and what it says when it does not.
    pub fn tls_files(mut self, files: TlsFiles) -> Self {
        self.tls = true;
        self.tls_files = Some(files);
        self
    }

    /// Raft heartbeat and election timeout in ms (defaults 100 / 1000, etcd's own).
    ///
    /// Why: failover tests may shorten elections; keep election >= 5x heartbeat, and remember a
    /// shared 2-core machine stalls, so very short timeouts cause spurious elections.
    pub fn timeouts_ms(mut self, heartbeat: u32, election: u32) -> Self {
        self.heartbeat_ms = heartbeat;
        self.election_ms = election;
        self
    }

    /// How long to wait for the cluster to become healthy (default 60 s).
    ///
    /// Why: a loaded CI machine can be slow; the default is generous but bounded.
    pub fn start_timeout(mut self, t: Duration) -> Self {
        self.start_timeout = t;
        self
    }

    /// Extra command-line flags for every member (e.g. `--auto-compaction-retention=1`).
    ///
    /// Why: a test may need a setting the builder has no method for.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra_args.push(a.into());
        self
    }

    /// Runs the members inside network namespace `name` (on its loopback) instead of the host's.
    ///
    /// Why: a lab's control plane lives in a namespace of its own on the lab's LAN.
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// Keeps data, logs and PKI in `dir` (created, never removed) instead of a temp dir.
    ///
    /// Why: `berth lab up` leaves its etcd running for `berth lab down` to remove.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// How member processes are spawned (parent-death signal, cgroups).
    ///
    /// Why: a lab's daemons outlive `berth lab up` and start in the lab's cgroups.
    pub fn spawn_opts(mut self, opts: SpawnOpts) -> Self {
        self.spawn = opts;
        self
    }

    /// Starts the cluster and waits until every member reports healthy.
    ///
    /// Why: tests start from a working cluster. Ports colliding with another process make the
    /// start retry (up to 3 times) on fresh ports.
    pub fn start(self) -> Result<EtcdCluster> {
        EtcdCluster::start_with(self)
    }
}

struct Member {
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    daemon: Option<Daemon>,
}

/// A running etcd cluster of one or more members on 127.0.0.1, killed and deleted on Drop.
///
/// Why: the ledger's etcd backend, the conformance suite and failover tests need real etcd
/// (Debian's 3.4 `/usr/bin/etcd`) with per-test data and ports, and the power to kill, stop and
/// restart members. All methods take `&self`, so a cluster can be shared between threads.
pub struct EtcdCluster {
    members: Mutex<Vec<Member>>,
    client_urls: Vec<String>,
    tls: Option<TlsFiles>,
    opts: EtcdBuilder,
    initial_cluster: String,
    token: String,
    started_in: Duration,
    dir: Workdir,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("client_urls", &self.client_urls)
            .field("tls", &self.tls.is_some())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl EtcdCluster {
    /// A builder with defaults: 1 member, no TLS. Why: the entry point for non-default setups.
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::default()
    }

    /// Starts `members` plain-HTTP members and waits until healthy. Why: the common case.
    pub fn start(members: usize) -> Result<EtcdCluster> {
        Self::builder().members(members).start()
    }

    /// Starts `members` members serving clients over mutual TLS. Why: TLS backend tests.
    pub fn start_tls(members: usize) -> Result<EtcdCluster> {
        Self::builder().members(members).tls(true).start()
    }

    fn start_with(opts: EtcdBuilder) -> Result<EtcdCluster> {
        if opts.members == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        tool("etcd");
        tool("etcdctl");
        crate::util::sweep_stale_once();
        let token = unique_name("etcd");
        let dir = Workdir::new(&token, opts.dir.as_deref()).context("creating etcd's dir")?;
        let tls = match (&opts.tls_files, opts.tls) {
            (Some(files), _) => Some(files.clone()),
            (None, true) => Some(TlsFiles::generate(&dir.path().join("pki"))?),
            (None, false) => None,
        };
        let mut cluster = EtcdCluster {
            members: Mutex::new(Vec::new()),
            client_urls: Vec::new(),
            tls,
            opts,
            initial_cluster: String::new(),
            token,
            started_in: Duration::ZERO,
            dir,
        };
        let start = Instant::now();
        let mut last_err = None;
        for attempt in 1..=3 {
            let n = cluster.opts.members;
            let ports = free_ports(3 * n)?;
            let mut members: Vec<Member> = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    data_dir: cluster.dir.path().join(format!("m{i}.data")),
                    log: cluster.dir.path().join(format!("m{i}.log")),
                    client_port: ports[3 * i],
                    peer_port: ports[3 * i + 1],
                    metrics_port: ports[3 * i + 2],
                    daemon: None,
                })
                .collect();
            cluster.initial_cluster = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            let scheme = if cluster.tls.is_some() {
                "https"
            } else {
                "http"
            };
            cluster.client_urls = members
                .iter()
                .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
                .collect();
            for m in members.iter_mut() {
                let _ = std::fs::remove_dir_all(&m.data_dir);
                let _ = std::fs::remove_file(&m.log);
                m.daemon = Some(cluster.spawn_member(m)?);
            }
            *cluster.lock() = members;
            let timeout = cluster.opts.start_timeout;
            match cluster.wait_all_healthy(timeout) {
                Ok(()) => {
                    cluster.started_in = start.elapsed();
                    return Ok(cluster);
                }
                Err(e) => {
                    let logs = cluster.logs_summary();
                    let collided = logs.contains("address already in use");
                    for m in cluster.lock().iter_mut() {
                        if let Some(mut d) = m.daemon.take() {
                            d.kill();
                        }
                    }
                    let e = e.context(format!(
                        "etcd cluster start attempt {attempt} failed; member logs:\n{logs}"
                    ));
                    if !collided {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("etcd cluster did not start")))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_member(&self, m: &Member) -> Result<Daemon> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = netns_command(self.opts.netns.as_deref(), tool("etcd"));
        clear_etcd_env(&mut cmd);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", m.metrics_port))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--heartbeat-interval")
            .arg(self.opts.heartbeat_ms.to_string())
            .arg("--election-timeout")
            .arg(self.opts.election_ms.to_string())
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr");
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&t.ca);
        }
        cmd.args(&self.opts.extra_args);
        Daemon::spawn_with(
            &format!("etcd-{}", m.name),
            cmd,
            Some(&m.log),
            &self.opts.spawn,
        )
    }

    fn logs_summary(&self) -> String {
        let members = self.lock();
        let mut s = String::new();
        for m in members.iter() {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            s.push_str(&format!("--- {} ({}):\n{tail}\n", m.name, m.log.display()));
        }
        s
    }

    /// Waits until every running member answers `/health` with `"health":"true"`, failing at
    /// once if a member process has exited.
    fn wait_all_healthy(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let mut all = true;
            {
                let mut members = self.lock();
                for m in members.iter_mut() {
                    let Some(d) = m.daemon.as_mut() else { continue };
                    if let Some(st) = d.try_status() {
                        bail!("etcd member {} exited during start: {st}", m.name);
                    }
                    if !self.member_healthy(m.metrics_port) {
                        all = false;
                    }
                }
            }
            if all {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("etcd members not healthy after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` until every running member reports healthy (has a leader).
    ///
    /// Why: after a kill or restart, tests wait for the cluster to settle before asserting.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let ports: Vec<u16> = self
            .lock()
            .iter()
            .filter(|m| m.daemon.is_some())
            .map(|m| m.metrics_port)
            .collect();
        wait_for(
            "running etcd members to be healthy",
            timeout,
            Duration::from_millis(50),
            || ports.iter().all(|p| self.member_healthy(*p)).then_some(()),
        )
        .with_context(|| self.logs_summary())
    }

    /// Time the initial start took until all members were healthy. Why: report timings.
    pub fn startup_time(&self) -> Duration {
        self.started_in
    }

    /// Number of members (running or not). Why: iterate over members in tests.
    pub fn len(&self) -> usize {
        self.client_urls.len()
    }

    /// Always false: a cluster has at least one member. Why: pairs with `len` (clippy).
    pub fn is_empty(&self) -> bool {
        self.client_urls.is_empty()
    }

    /// Client URLs of all members (`http://` or `https://127.0.0.1:PORT`), stable for the
    /// cluster's lifetime, also across restarts. Why: configure clients under test.
    pub fn client_urls(&self) -> Vec<String> {
        self.client_urls.clone()
    }

    /// Client URL of member `i`. Why: talk to one member on purpose (e.g. a minority member).
    pub fn client_url(&self, i: usize) -> String {
        self.client_urls[i].clone()
    }

    /// Client URLs joined by commas. Why: the format of `--endpoints` and kube-ipam configs.
    pub fn endpoints_csv(&self) -> String {
        self.client_urls.join(",")
    }

    /// TLS files when started with TLS (`ca.pem`, `client.pem`, `client-key.pem`, ...).
    ///
    /// Why: clients under test need the CA and a client certificate.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The cluster's temp directory (data dirs, logs, PKI). Why: put test files next to it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Data directory of member `i`. Why: corruption / backup tests.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.lock()[i].data_dir.clone()
    }

    /// The log of member `i` so far. Why: explain a failing test.
    pub fn member_log(&self, i: usize) -> String {
        let log = self.lock()[i].log.clone();
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// PID of member `i` if it runs. Why: SIGSTOP a member to make it silent.
    pub fn member_pid(&self, i: usize) -> Option<u32> {
        self.lock()[i].daemon.as_ref().map(|d| d.pid())
    }

    /// Whether member `i`'s process is running. Why: assert on failover state.
    pub fn is_running(&self, i: usize) -> bool {
        let mut members = self.lock();
        let m = &mut members[i];
        let running = m.daemon.as_mut().is_some_and(|d| d.is_running());
        if !running {
            m.daemon = None;
        }
        running
    }

    /// SIGKILLs member `i` (a crash: no clean shutdown). No-op if it is down.
    ///
    /// Why: failover tests; the member's data dir is kept for [`Self::restart_member`].
    pub fn kill_member(&self, i: usize) -> Result<()> {
        let mut members = self.lock();
        let m = members
            .get_mut(i)
            .ok_or_else(|| anyhow!("no etcd member {i}"))?;
        if let Some(mut d) = m.daemon.take() {
            d.kill();
        }
        Ok(())
    }

    /// SIGTERMs member `i` and waits for it to exit (etcd takes >1 s; SIGKILL after 20 s).
    ///
    /// Why: a clean stop, after which the ports and data dir are free for a restart.
    pub fn stop_member(&self, i: usize) -> Result<()> {
        let mut members = self.lock();
        let m = members
            .get_mut(i)
            .ok_or_else(|| anyhow!("no etcd member {i}"))?;
        if let Some(mut d) = m.daemon.take() {
            d.terminate(Duration::from_secs(20));
        }
        Ok(())
    }

    /// Starts member `i` again on the same ports and data dir (stopping it first if it runs).
    ///
    /// Waits until the member listens and, if a quorum of members now runs, until it reports
    /// healthy. Why: crash-recovery tests; clients keep their endpoint list.
    pub fn restart_member(&self, i: usize) -> Result<()> {
        self.stop_member(i)?;
        let (metrics_port, quorum) = {
            let mut members = self.lock();
            let d = self.spawn_member(&members[i])?;
            members[i].daemon = Some(d);
            let running = members.iter().filter(|m| m.daemon.is_some()).count();
            (members[i].metrics_port, running > members.len() / 2)
        };
        let timeout = self.opts.start_timeout;
        wait_for(
            &format!("etcd member {i} to listen"),
            timeout,
            Duration::from_millis(50),
            || {
                if !self.is_running(i) {
                    return Some(Err(anyhow!("etcd member {i} exited after restart")));
                }
                http_get(metrics_port, "/health").ok().map(|_| Ok(()))
            },
        )
        .and_then(|r| r)
        .with_context(|| self.logs_summary())?;
        if quorum {
            wait_for(
                &format!("etcd member {i} to be healthy"),
                timeout,
                Duration::from_millis(50),
                || member_healthy(metrics_port).then_some(()),
            )
            .with_context(|| self.logs_summary())?;
        }
        Ok(())
    }

    /// Index of the member that currently is the raft leader, if a running member says so.
    ///
    /// Read from each member's `etcd_server_is_leader` metric (plain HTTP, works with TLS too).
    /// Why: failover tests kill the leader on purpose.
    pub fn leader_index(&self) -> Option<usize> {
        let ports: Vec<(usize, u16)> = self
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.daemon.is_some())
            .map(|(i, m)| (i, m.metrics_port))
            .collect();
        ports.into_iter().find_map(|(i, port)| {
            let (_, body) = http_get(port, "/metrics").ok()?;
            body.lines()
                .any(|l| l.trim() == "etcd_server_is_leader 1")
                .then_some(i)
        })
    }

    /// Waits up to `timeout` for a leader and returns its index. Why: after killing a leader.
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize> {
        wait_for("an etcd leader", timeout, Duration::from_millis(50), || {
            self.leader_index()
        })
    }

    /// An `etcdctl` command preset with `--endpoints` (all members) and, under TLS, the CA and
    /// client certificate. Add the subcommand and run it.
    ///
    /// Why: tests check what the code under test wrote with an independent client.
    pub fn etcdctl(&self) -> Command {
        self.etcdctl_for(&self.endpoints_csv())
    }

    /// Like [`Self::etcdctl`] but talking to member `i` only. Why: per-member reads.
    pub fn etcdctl_member(&self, i: usize) -> Command {
        self.etcdctl_for(&self.client_urls[i])
    }

    fn etcdctl_for(&self, endpoints: &str) -> Command {
        let mut cmd = netns_command(self.opts.netns.as_deref(), tool("etcdctl"));
        clear_etcd_env(&mut cmd);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"));
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        cmd
    }

    /// Runs `etcdctl <args>` against all members and returns stdout; fails on non-zero exit.
    ///
    /// Why: the one-liner for `put`/`get` checks in tests.
    pub fn etcdctl_run(&self, args: &[&str]) -> Result<String> {
        let out = run_checked(self.etcdctl().args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl EtcdCluster {
    /// PIDs of the running members. Why: a lab records every process it started.
    pub fn pids(&self) -> Vec<u32> {
        self.lock()
            .iter()
            .filter_map(|m| m.daemon.as_ref().map(Daemon::pid))
            .collect()
    }

    fn member_healthy(&self, metrics_port: u16) -> bool {
        in_netns(self.opts.netns.as_deref(), || member_healthy(metrics_port)).unwrap_or(false)
    }

    /// Lets the members go: they keep running, their dir is kept, and this handle forgets them.
    /// Returns their PIDs.
    ///
    /// Why: `berth lab up` exits while its etcd runs on; `berth lab down` stops it later.
    pub fn release(self) -> Vec<u32> {
        let mut this = self;
        let pids = this
            .lock()
            .iter_mut()
            .filter_map(|m| m.daemon.take().map(Daemon::release))
            .collect();
        if let Workdir::Temp(t) = std::mem::replace(&mut this.dir, Workdir::Kept(PathBuf::new())) {
            let _ = t.keep();
        }
        pids
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in self.lock().iter_mut() {
            if let Some(mut d) = m.daemon.take() {
                d.kill();
            }
        }
        // The TempDir field removes data dirs, logs and PKI after this.
    }
}

/// A single-member etcd: a thin wrapper over a one-member [`EtcdCluster`] (all its methods are
/// available through `Deref`).
///
/// Why: most ledger tests need just one etcd and one URL.
#[derive(Debug)]
pub struct Etcd {
    cluster: EtcdCluster,
}

impl Etcd {
    /// Starts one plain-HTTP member and waits until healthy. Why: the common case.
    pub fn start() -> Result<Etcd> {
        Ok(Etcd {
            cluster: EtcdCluster::start(1)?,
        })
    }

    /// Starts one member with mutual TLS. Why: TLS backend tests.
    pub fn start_tls() -> Result<Etcd> {
        Ok(Etcd {
            cluster: EtcdCluster::start_tls(1)?,
        })
    }

    /// The member's client URL. Why: configure the client under test.
    pub fn url(&self) -> String {
        self.cluster.client_url(0)
    }

    /// Kills (SIGKILL) the member. Why: crash tests.
    pub fn kill(&self) -> Result<()> {
        self.cluster.kill_member(0)
    }

    /// Stops (SIGTERM, waits) the member. Why: clean-stop tests.
    pub fn stop(&self) -> Result<()> {
        self.cluster.stop_member(0)
    }

    /// Restarts the member on the same port and data. Why: restart tests.
    pub fn restart(&self) -> Result<()> {
        self.cluster.restart_member(0)
    }

    /// The underlying one-member cluster. Why: pass it where an `EtcdCluster` is expected.
    pub fn cluster(&self) -> &EtcdCluster {
        &self.cluster
    }
}

impl std::ops::Deref for Etcd {
    type Target = EtcdCluster;
    fn deref(&self) -> &EtcdCluster {
        &self.cluster
    }
}

/// Removes inherited `ETCD*` variables so a developer's shell settings cannot redirect a
/// daemon or client started by the harness.
fn clear_etcd_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
}

fn member_healthy(metrics_port: u16) -> bool {
    matches!(http_get(metrics_port, "/health"), Ok((200, body)) if body.contains("\"health\":\"true\""))
}

/// Minimal HTTP/1.0 GET against 127.0.0.1:`port`, returning status and body.
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP response from port {port}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
