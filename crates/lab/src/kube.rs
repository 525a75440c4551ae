//! A real Kubernetes control plane (kube-apiserver + kube-controller-manager v1.20.2) on
//! loopback, built from Debian's `kubernetes` source package by `hack/kube-build.sh`.
//!
//! Why: Berth's Kubernetes integration (watching nodes and pods, its CRDs, leases) must be tested
//! against the real API server: its validation, resource versions, watch semantics and restarts.
//! No registry ships kube-apiserver, so the binaries are built once from Debian's source and
//! cached (`cargo xtask kube build`); this module starts them per test with their own etcd,
//! PKI, token and free ports, and kills only the PIDs it recorded.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::etcd::EtcdCluster;
use crate::process::{Daemon, SpawnOpts};
use crate::tls::TlsFiles;
use crate::util::{free_ports, netns_command, run_checked, show, tool, unique_name, Workdir};

/// Kubernetes version the cache holds. Why: names the cache directory and the error messages.
pub const KUBE_VERSION: &str = "1.20.2";

/// Service CIDR given to the apiserver. Why: tests that create Services may need to know it.
pub const KUBE_SERVICE_CIDR: &str = "10.96.0.0/12";

/// The apiserver's audit policy: metadata of every request made by a ServiceAccount, nothing
/// else. Why: the tests run Berth's roles as deploy/'s ServiceAccounts and must see every refusal
/// (a 403 on a watch only shows up as a retrying warning in the client's log); the harness's own
/// admin requests and the controller-manager's are not of interest and cost log volume.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [\"system:serviceaccounts\"]
  - level: None
";

/// The kinds of RBAC-related documents [`KubeControlPlane::apply_manifest`] applies when asked
/// for RBAC only: what a role needs to exist before its ServiceAccount can act.
pub const RBAC_KINDS: &[&str] = &[
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// The collection URL of a manifest document (`apiVersion`, `kind`, `metadata.namespace`).
/// Why: applying manifests without kubectl needs the REST path; only kinds the harness knows.
fn collection_path(doc: &serde_json::Value) -> Result<String> {
    let kind = doc["kind"].as_str().unwrap_or("");
    let api = doc["apiVersion"].as_str().unwrap_or("");
    let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
    let prefix = if api.contains('/') {
        format!("/apis/{api}")
    } else {
        format!("/api/{api}")
    };
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "ConfigMap" => ("configmaps", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "DaemonSet" => ("daemonsets", true),
        "Deployment" => ("deployments", true),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        other => bail!(
            "manifest kind {other:?} ({api}) is unknown to the harness: add it to collection_path"
        ),
    };
    Ok(if namespaced {
        format!("{prefix}/namespaces/{ns}/{plural}")
    } else {
        format!("{prefix}/{plural}")
    })
}

/// Controllers the controller-manager runs: all defaults except node IPAM and node lifecycle.
///
/// Why: test Nodes have no kubelet; the node lifecycle controller would mark them NotReady and
/// evict their pods after ~60 s, and Berth, not Kubernetes, hands out pod addresses.
pub const KUBE_CONTROLLERS: &str = "*,-nodeipam,-nodelifecycle";

/// The directory holding the cached binaries: `$BERTH_KUBE_BIN` if set, else
/// `$BERTH_KUBE_CACHE/bin`, else `$HOME/.cache/berth/kubernetes-1.20.2/bin`.
///
/// Why: `hack/kube-build.sh` and the harness must agree on one place, and CI or a developer can
/// point both elsewhere with the same variable.
pub fn kube_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_KUBE_BIN") {
        return PathBuf::from(d);
    }
    let cache = match std::env::var_os("BERTH_KUBE_CACHE") {
        Some(c) => PathBuf::from(c),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(format!(".cache/berth/kubernetes-{KUBE_VERSION}"))
        }
    };
    cache.join("bin")
}

/// Returns `dir/name` if it is an executable file, else an error naming `cargo xtask kube build`.
fn kube_binary(dir: &Path, name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    let ok = p
        .metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !ok {
        bail!(
            "berth-testbed: Kubernetes binary {} not found. Build and cache kube-apiserver and \
             kube-controller-manager v{KUBE_VERSION} from Debian's source package with \
             `cargo xtask kube build` (or `sudo bash hack/kube-build.sh`; ~8 minutes once, then \
             cached). Set BERTH_KUBE_CACHE (or BERTH_KUBE_BIN) if they live elsewhere.",
            p.display()
        );
    }
    Ok(p)
}

/// Panics unless the cached kube-apiserver and kube-controller-manager exist, naming
/// `cargo xtask kube build`.
///
/// Why: Kubernetes tests must fail loudly, never skip, on a machine without the binaries; call
/// it first in such a test so the message comes before any setup.
pub fn require_kube_binaries() {
    let dir = kube_bin_dir();
    for b in ["kube-apiserver", "kube-controller-manager"] {
        if let Err(e) = kube_binary(&dir, b) {
            panic!("{e:#}");
        }
    }
}

/// How a control plane is started. Build with [`KubeControlPlane::builder`].
///
/// Why: most tests want the defaults; a few need an extra apiserver flag, no controller-manager
/// (cheaper, when nothing needs controllers), or longer timeouts on a loaded machine.
#[derive(Debug, Clone)]
pub struct KubeBuilder {
    bin_dir: Option<PathBuf>,
    controller_manager: bool,
    apiserver_args: Vec<String>,
    controller_manager_args: Vec<String>,
    start_timeout: Duration,
    netns: Option<String>,
    dir: Option<PathBuf>,
    port: Option<u16>,
    advertise: Option<String>,
    service_cidr: String,
    sans: Vec<String>,
    scheduler: bool,
    nodes: bool,
    users: Vec<String>,
    spawn: SpawnOpts,
    controllers: String,
}

impl Default for KubeBuilder {
    fn default() -> Self {
        KubeBuilder {
            bin_dir: None,
            controller_manager: true,
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
            start_timeout: Duration::from_secs(120),
            netns: None,
            dir: None,
            port: None,
            advertise: None,
            service_cidr: KUBE_SERVICE_CIDR.to_string(),
            sans: Vec::new(),
            scheduler: false,
            nodes: false,
            users: Vec::new(),
            spawn: SpawnOpts::default(),
            controllers: KUBE_CONTROLLERS.to_string(),
        }
    }
}

impl KubeBuilder {
    /// Directory of the Kubernetes binaries (default [`kube_bin_dir`]).
    ///
    /// Why: tests of the harness itself, or a developer with binaries elsewhere.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Whether to start kube-controller-manager (default true).
    ///
    /// Why: it costs ~100 MB and some CPU; tests that only use the API (CRDs, nodes, pods created
    /// by the test) can skip it. Without it no "default" ServiceAccount appears, so pods are
    /// refused by the ServiceAccount admission plugin unless the test creates the account.
    pub fn controller_manager(mut self, on: bool) -> Self {
        self.controller_manager = on;
        self
    }

    /// An extra kube-apiserver flag, e.g. `--feature-gates=...`. Later flags win.
    ///
    /// Why: a test may need a setting this harness has no method for.
    pub fn apiserver_arg(mut self, a: impl Into<String>) -> Self {
        self.apiserver_args.push(a.into());
        self
    }

    /// An extra kube-controller-manager flag. Later flags win.
    ///
    /// Why: e.g. a test that wants a different `--controllers` list.
    pub fn controller_manager_arg(mut self, a: impl Into<String>) -> Self {
        self.controller_manager_args.push(a.into());
        self
    }

    /// How long each component may take to become ready (default 120 s).
    ///
    /// Why: the apiserver is ready in a few seconds on an idle machine, but a 2-core CI machine
    /// running several suites at once can be many times slower; the wait stays bounded.
    pub fn start_timeout(mut self, t: Duration) -> Self {
        self.start_timeout = t;
        self
    }

    /// Runs etcd and every component inside network namespace `name`; clients reach the
    /// apiserver on that namespace's addresses (requests of this handle enter it).
    ///
    /// Why: a lab's control plane is a host on the lab's LAN, so the apiserver reaches kubelets
    /// at their InternalIPs and nodes reach it as real nodes do, with no link in the root
    /// namespace.
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// Keeps PKI, logs, tokens, etcd data and the kubeconfig in `dir` (created, never
    /// removed) instead of a temp dir.
    ///
    /// Why: `berth lab up` leaves its control plane running for `berth lab down`.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Serves on this port instead of a free one, on all addresses of the namespace.
    ///
    /// Why: in a namespace of its own nothing else binds, and a lab's users expect 6443.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The address the apiserver advertises (the `kubernetes` Service's endpoint); also a SAN
    /// of its certificate.
    ///
    /// Why: pods reach the API through the `kubernetes` ClusterIP, which kube-proxy sends here.
    pub fn advertise(mut self, addr: &str) -> Self {
        self.advertise = Some(addr.to_string());
        self.sans.push(addr.to_string());
        self
    }

    /// The Service ClusterIP range (default [`KUBE_SERVICE_CIDR`]); its first address becomes
    /// a SAN of the serving certificate.
    ///
    /// Why: a lab uses only 198.18.0.0/15 inside its namespaces.
    pub fn service_cidr(mut self, cidr: &str) -> Self {
        self.service_cidr = cidr.to_string();
        self
    }

    /// The controller-manager's `--controllers` (default [`KUBE_CONTROLLERS`]).
    ///
    /// Why: `--controllers` is a list flag, so a second one appends instead of replacing; with
    /// real kubelets the node lifecycle controller must run (it lifts the not-ready taint).
    pub fn controllers(mut self, list: &str) -> Self {
        self.controllers = list.to_string();
        self
    }

    /// Starts kube-scheduler too (default false).
    ///
    /// Why: with real kubelets pods are placed by the real scheduler, not by the test.
    pub fn scheduler(mut self, on: bool) -> Self {
        self.scheduler = on;
        self
    }

    /// Prepares for real kubelets: the Node authorizer and the NodeRestriction admission
    /// plugin, and a client certificate the apiserver presents to kubelets (the CA is
    /// [`KubeControlPlane::ca_pem`]).
    ///
    /// Why: kubelets authenticate with node credentials as on a real cluster, and logs/exec
    /// reach them authenticated.
    pub fn real_nodes(mut self, on: bool) -> Self {
        self.nodes = on;
        self
    }

    /// Adds a static token user: `token,user,uid,"group1,group2"` (a token file line).
    ///
    /// Why: kubelets (`system:node:NAME` in `system:nodes`) and kube-proxy
    /// (`system:kube-proxy`) get credentials of their own.
    pub fn user(mut self, token: &str, user: &str, groups: &[&str]) -> Self {
        self.users
            .push(format!("{token},{user},{user},\"{}\"", groups.join(",")));
        self
    }

    /// How component processes are spawned (parent-death signal, cgroups).
    ///
    /// Why: a lab's daemons outlive `berth lab up` and start in the lab's cgroups.
    pub fn spawn_opts(mut self, opts: SpawnOpts) -> Self {
        self.spawn = opts;
        self
    }

    /// Starts etcd, the apiserver and (unless disabled) the controller-manager, and waits until
    /// they are ready.
    ///
    /// Why: tests start from a control plane that answers and whose controllers run.
    pub fn start(self) -> Result<KubeControlPlane> {
        KubeControlPlane::start_with(self)
    }
}

/// A response of [`KubeControlPlane::request`]: HTTP status and body.
///
/// Why: tests assert on both (e.g. 201 Created, 409 AlreadyExists) without a client library.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// HTTP status code. Why: distinguishes created/conflict/not-found.
    pub status: u16,
    /// Raw body. Why: error bodies are `Status` objects worth printing.
    pub body: String,
}

impl ApiResponse {
    /// The body parsed as JSON. Why: most answers are JSON objects to inspect.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {}", self.status, self.body))
    }

    /// Whether the status is 2xx. Why: the common check.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The JSON body if the status is 2xx, else an error with status and body.
    ///
    /// Why: `cp.request(...)?.ok()?` reads like the happy path and explains failures.
    pub fn ok(&self) -> Result<serde_json::Value> {
        if !self.is_success() {
            bail!("HTTP {}: {}", self.status, self.body);
        }
        self.json()
    }
}

/// Start-up timings of a control plane. Why: lets the lead judge what one instance costs.
#[derive(Debug, Clone, Copy, Default)]
pub struct KubeTimings {
    /// etcd healthy after this long.
    pub etcd: Duration,
    /// kube-apiserver spawned to `/readyz` ok.
    pub apiserver: Duration,
    /// kube-controller-manager spawned to the `default` ServiceAccount (with its token secret)
    /// existing, i.e. controllers working; zero without a controller-manager.
    pub controller_manager: Duration,
    /// Whole `start()`, including key generation.
    pub total: Duration,
}

/// A running Kubernetes control plane on 127.0.0.1: its own etcd, kube-apiserver and
/// kube-controller-manager, stopped and deleted on Drop.
///
/// Why: tests of Berth's Kubernetes side need a real API server with real storage that they can
/// restart mid-test. Every instance has its own ports, etcd, PKI, token and temp dir, so tests
/// run in parallel. No kubelet, scheduler or cloud provider runs, and the apiserver never dials
/// out (`--advertise-address=127.0.0.1`, kubelets by InternalIP only). Methods take `&self`, so
/// one control plane can be shared by threads (e.g. restart the apiserver during a write burst).
///
/// ```no_run
/// use berth_lab::KubeControlPlane;
/// let cp = KubeControlPlane::start().unwrap();
/// // kube-rs: Kubeconfig::read_from(cp.kubeconfig()) + Config::from_custom_kubeconfig(..)
/// let nodes = cp.request("GET", "/api/v1/nodes", None).unwrap().ok().unwrap();
/// cp.restart_apiserver().unwrap(); // same port, same data
/// ```
pub struct KubeControlPlane {
    etcd: Option<EtcdCluster>,
    dir: Workdir,
    bin_dir: PathBuf,
    opts: KubeBuilder,
    port: u16,
    token: String,
    tls: TlsFiles,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    token_file: PathBuf,
    kubeconfig: PathBuf,
    apiserver: Mutex<Option<Daemon>>,
    /// Each apiserver start: (spawned, ready), as audit-log timestamps.
    starts: Mutex<Vec<(String, Option<String>)>>,
    controller_manager: Mutex<Option<Daemon>>,
    scheduler: Mutex<Option<Daemon>>,
    timings: KubeTimings,
}

impl std::fmt::Debug for KubeControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeControlPlane")
            .field("server", &self.server())
            .field("kubeconfig", &self.kubeconfig)
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Standard base64 (with padding). Why: kubeconfig's `certificate-authority-data`, without a
/// new dependency.
pub(crate) fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// A random hex token from the kernel's RNG. Why: every control plane has its own credential.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn write_file(p: &Path, s: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, s).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Removes proxy settings so that neither the daemons nor curl send loopback traffic to a proxy.
fn no_proxy(cmd: &mut Command) {
    for v in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("NO_PROXY", "*").env("no_proxy", "*");
}

impl KubeControlPlane {
    /// A builder with defaults (controller-manager on, 120 s timeouts).
    ///
    /// Why: the entry point for non-default setups.
    pub fn builder() -> KubeBuilder {
        KubeBuilder::default()
    }

    /// Starts a control plane with defaults and waits until the apiserver is ready and the
    /// controllers work.
    ///
    /// Why: the common case. Fails (never skips) when the binaries are missing, naming
    /// `cargo xtask kube build`.
    pub fn start() -> Result<KubeControlPlane> {
        Self::builder().start()
    }

    fn start_with(opts: KubeBuilder) -> Result<KubeControlPlane> {
        let t0 = Instant::now();
        let bin_dir = opts.bin_dir.clone().unwrap_or_else(kube_bin_dir);
        kube_binary(&bin_dir, "kube-apiserver")?;
        if opts.controller_manager {
            kube_binary(&bin_dir, "kube-controller-manager")?;
        }
        tool("curl");
        crate::util::sweep_stale_once();

        let name = unique_name("kube");
        let dir = Workdir::new(&name, opts.dir.as_deref()).context("creating the kube dir")?;
        let d = dir.path();

        let mut eb = EtcdCluster::builder().spawn_opts(opts.spawn.clone());
        if let Some(ns) = &opts.netns {
            eb = eb.netns(ns);
        }
        if opts.dir.is_some() {
            eb = eb.dir(d.join("etcd"));
        }
        let etcd = eb.start().context("starting etcd for the control plane")?;
        let etcd_time = etcd.startup_time();

        // Serving PKI of our own, so clients verify against a real CA file (the apiserver's
        // self-signed fallback would be a leaf-plus-CA bundle); SANs 127.0.0.1, ::1, localhost.
        let mut sans = opts.sans.clone();
        sans.push(first_service_ip(&opts.service_cidr)?);
        sans.extend(
            [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
            .map(String::from),
        );
        let tls = TlsFiles::generate_with_sans(&d.join("pki"), &sans)?;
        std::fs::create_dir_all(d.join("cert-dir"))?;

        // Service-account token signing key (ECDSA P-256, PKCS#8): apiserver signs and
        // verifies, the controller-manager's token controller signs secrets with it.
        let sa = rcgen::KeyPair::generate().context("generating the service-account key")?;
        let sa_key = d.join("sa.key");
        let sa_pub = d.join("sa.pub");
        write_file(&sa_key, &sa.serialize_pem(), 0o600)?;
        write_file(&sa_pub, &sa.public_key_pem(), 0o644)?;

        write_file(&d.join("audit-policy.yaml"), AUDIT_POLICY, 0o644)?;
        let token = random_token()?;
        let token_file = d.join("tokens.csv");
        let mut tokens = format!("{token},admin,admin,\"system:masters\"\n");
        for u in &opts.users {
            tokens.push_str(u);
            tokens.push('\n');
        }
        write_file(&token_file, &tokens, 0o600)?;

        let mut cp = KubeControlPlane {
            etcd: Some(etcd),
            bin_dir,
            opts,
            port: 0,
            token,
            tls,
            sa_key,
            sa_pub,
            token_file,
            kubeconfig: d.join("kubeconfig"),
            apiserver: Mutex::new(None),
            starts: Mutex::new(Vec::new()),
            controller_manager: Mutex::new(None),
            scheduler: Mutex::new(None),
            timings: KubeTimings {
                etcd: etcd_time,
                ..KubeTimings::default()
            },
            dir,
        };

        // The port is found free but another process may take it first: retry on collision.
        let mut last_err = None;
        for attempt in 1..=3 {
            cp.port = match cp.opts.port {
                Some(p) => p,
                None => free_ports(1)?[0],
            };
            let t = Instant::now();
            match cp.start_apiserver() {
                Ok(()) => {
                    cp.timings.apiserver = t.elapsed();
                    last_err = None;
                    break;
                }
                Err(e) => {
                    let log = std::fs::read_to_string(cp.apiserver_log()).unwrap_or_default();
                    let collided = log.contains("address already in use");
                    let e = e.context(format!("kube-apiserver start attempt {attempt} failed"));
                    if !collided || cp.opts.port.is_some() {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        cp.write_kubeconfig()?;

        if cp.opts.controller_manager {
            let t = Instant::now();
            cp.start_controller_manager()?;
            cp.wait_default_service_account("default", cp.opts.start_timeout)
                .context("waiting for kube-controller-manager to create default/default")?;
            cp.timings.controller_manager = t.elapsed();
        }
        if cp.opts.scheduler {
            cp.start_scheduler()?;
        }
        cp.timings.total = t0.elapsed();
        Ok(cp)
    }

    fn write_kubeconfig(&self) -> Result<()> {
        self.write_kubeconfig_for(&self.kubeconfig, "admin", &self.token, "default")
    }

    /// A kubeconfig at `path` for this apiserver with bearer `token` as `user`, default
    /// namespace `namespace`.
    fn write_kubeconfig_for(
        &self,
        path: &Path,
        user: &str,
        token: &str,
        namespace: &str,
    ) -> Result<()> {
        let ca = std::fs::read(&self.tls.ca)?;
        let cfg = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: berth-test\n  \
               cluster:\n    \
                 server: {server}\n    \
                 certificate-authority-data: {ca}\n\
             users:\n\
             - name: {user}\n  \
               user:\n    \
                 token: {token}\n\
             contexts:\n\
             - name: berth-test\n  \
               context:\n    \
                 cluster: berth-test\n    \
                 user: {user}\n    \
                 namespace: {namespace}\n\
             current-context: berth-test\n",
            server = self.server(),
            ca = base64(&ca),
        );
        write_file(path, &cfg, 0o600)
    }

    /// The kube-apiserver command line (without the binary). Why: shown in the report and logs.
    fn apiserver_args(&self) -> Vec<String> {
        let d = self.dir.path();
        let p = |x: &Path| x.display().to_string();
        let (advertise, bind) = match &self.opts.advertise {
            Some(a) => (a.clone(), "0.0.0.0".to_string()),
            None => ("127.0.0.1".to_string(), "127.0.0.1".to_string()),
        };
        let mut a = vec![
            format!("--etcd-servers={}", self.etcd().endpoints_csv()),
            "--etcd-prefix=/registry".into(),
            format!("--advertise-address={advertise}"),
            format!("--bind-address={bind}"),
            format!("--secure-port={}", self.port),
            // 1.20 still serves an unauthenticated port (8080) by default: never.
            "--insecure-port=0".into(),
            format!("--cert-dir={}", p(&d.join("cert-dir"))),
            format!("--tls-cert-file={}", p(&self.tls.server_cert)),
            format!("--tls-private-key-file={}", p(&self.tls.server_key)),
            format!("--token-auth-file={}", p(&self.token_file)),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p(&self.sa_pub)),
            format!("--service-account-signing-key-file={}", p(&self.sa_key)),
            // Every request of a ServiceAccount is recorded, so a test can assert that none was
            // refused (see `forbidden_requests`).
            format!("--audit-policy-file={}", p(&d.join("audit-policy.yaml"))),
            format!("--audit-log-path={}", p(&self.audit_log())),
            "--audit-log-format=json".into(),
            "--audit-log-maxbackup=0".into(),
            format!("--service-cluster-ip-range={}", self.opts.service_cidr),
            // Never resolve node hostnames through the host's DNS.
            "--kubelet-preferred-address-types=InternalIP".into(),
            // Less background work on a shared 2-core machine.
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--allow-privileged=true".into(),
            "--logtostderr=true".into(),
        ];
        if self.opts.nodes {
            a.extend([
                "--authorization-mode=Node,RBAC".to_string(),
                "--enable-admission-plugins=NodeRestriction".to_string(),
                format!("--kubelet-client-certificate={}", p(&self.tls.client_cert)),
                format!("--kubelet-client-key={}", p(&self.tls.client_key)),
            ]);
        } else {
            a.push("--authorization-mode=RBAC".into());
        }
        a.extend(self.opts.apiserver_args.iter().cloned());
        a
    }

    fn scheduler_args(&self) -> Vec<String> {
        vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--port=0".into(),
            "--profiling=false".into(),
            "--logtostderr=true".into(),
        ]
    }

    /// Starts kube-scheduler (if not running).
    ///
    /// Why: real kubelets run what the scheduler binds to them; tests may also stop it to hold
    /// pods Pending.
    pub fn start_scheduler(&self) -> Result<()> {
        let mut guard = lock(&self.scheduler);
        if let Some(d) = guard.as_mut() {
            if d.is_running() {
                return Ok(());
            }
        }
        let mut cmd = netns_command(
            self.opts.netns.as_deref(),
            kube_binary(&self.bin_dir, "kube-scheduler")?,
        );
        no_proxy(&mut cmd);
        cmd.args(self.scheduler_args());
        let log = self.dir.path().join("kube-scheduler.log");
        let mut daemon = Daemon::spawn_with("kube-scheduler", cmd, Some(&log), &self.opts.spawn)?;
        std::thread::sleep(Duration::from_millis(200));
        if let Some(st) = daemon.try_status() {
            bail!(
                "kube-scheduler exited at once ({st}); log {}:\n{}",
                log.display(),
                daemon.log_tail(30)
            );
        }
        *guard = Some(daemon);
        Ok(())
    }

    /// The PIDs of the running components (etcd, apiserver, controller-manager, scheduler).
    ///
    /// Why: a lab records every process it started in its state file.
    pub fn pids(&self) -> Vec<u32> {
        let mut p = self.etcd().pids();
        for m in [&self.apiserver, &self.controller_manager, &self.scheduler] {
            if let Some(d) = lock(m).as_ref() {
                p.push(d.pid());
            }
        }
        p
    }

    /// Lets the control plane go: its processes keep running, its dir is kept, and this handle
    /// forgets them. Returns their PIDs.
    ///
    /// Why: `berth lab up` exits while its control plane runs on; `berth lab down` stops it.
    pub fn release(mut self) -> Vec<u32> {
        let mut pids = self
            .etcd
            .take()
            .map(EtcdCluster::release)
            .unwrap_or_default();
        for m in [&self.apiserver, &self.controller_manager, &self.scheduler] {
            if let Some(d) = lock(m).take() {
                pids.push(d.release());
            }
        }
        if let Workdir::Temp(t) = std::mem::replace(&mut self.dir, Workdir::Kept(PathBuf::new())) {
            let _ = t.keep();
        }
        pids
    }

    fn controller_manager_args(&self) -> Vec<String> {
        let p = |x: &Path| x.display().to_string();
        let mut a = vec![
            format!("--kubeconfig={}", p(&self.kubeconfig)),
            format!("--controllers={}", self.opts.controllers),
            "--bind-address=127.0.0.1".into(),
            // No serving at all: nothing to collide on, nothing to probe.
            "--secure-port=0".into(),
            "--port=0".into(),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=false".into(),
            format!("--service-account-private-key-file={}", p(&self.sa_key)),
            format!("--root-ca-file={}", p(&self.tls.ca)),
            "--profiling=false".into(),
            "--logtostderr=true".into(),
        ];
        a.extend(self.opts.controller_manager_args.iter().cloned());
        a
    }

    /// Starts kube-apiserver (if not running) on this control plane's port and waits for
    /// `/readyz`.
    ///
    /// Why: the second half of a restart, after [`stop_apiserver`](Self::stop_apiserver) or
    /// [`kill_apiserver`](Self::kill_apiserver); data lives in etcd, so objects survive.
    pub fn start_apiserver(&self) -> Result<()> {
        let mut guard = lock(&self.apiserver);
        if let Some(d) = guard.as_mut() {
            if d.is_running() {
                return Ok(());
            }
        }
        let mut cmd = netns_command(
            self.opts.netns.as_deref(),
            self.bin_dir.join("kube-apiserver"),
        );
        no_proxy(&mut cmd);
        cmd.args(self.apiserver_args());
        lock(&self.starts).push((audit_time(std::time::SystemTime::now()), None));
        let daemon = Daemon::spawn_with(
            "kube-apiserver",
            cmd,
            Some(&self.apiserver_log()),
            &self.opts.spawn,
        )?;
        *guard = Some(daemon);
        let timeout = self.opts.start_timeout;
        let start = Instant::now();
        loop {
            if let Some(st) = guard.as_mut().and_then(|d| d.try_status()) {
                bail!(
                    "kube-apiserver exited during start ({st}); log {}:\n{}",
                    self.apiserver_log().display(),
                    guard.as_ref().map(|d| d.log_tail(30)).unwrap_or_default()
                );
            }
            if let Ok(r) = self.request("GET", "/readyz", None) {
                if r.status == 200 {
                    if let Some(last) = lock(&self.starts).last_mut() {
                        last.1 = Some(audit_time(std::time::SystemTime::now()));
                    }
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                let tail = guard.as_ref().map(|d| d.log_tail(30)).unwrap_or_default();
                bail!(
                    "kube-apiserver not ready after {timeout:?}; log {}:\n{tail}",
                    self.apiserver_log().display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERMs kube-apiserver and waits until it has exited (SIGKILL after 3 s).
    ///
    /// Why: clients must see the API vanish (connection refused) and come back; the port is free
    /// again once this returns. On SIGTERM the apiserver stops listening and ends its watches at
    /// once, but then waits up to 60 s for clients to close their idle HTTP/2 connections (the
    /// controller-manager never does), so the rest of the drain is cut short.
    pub fn stop_apiserver(&self) -> Result<()> {
        if let Some(mut d) = lock(&self.apiserver).take() {
            d.terminate(Duration::from_secs(3));
        }
        Ok(())
    }

    /// SIGKILLs kube-apiserver (a crash: no graceful close of watches or connections).
    ///
    /// Why: watch and retry code must survive an apiserver that disappears mid-stream.
    pub fn kill_apiserver(&self) -> Result<()> {
        if let Some(mut d) = lock(&self.apiserver).take() {
            d.kill();
        }
        Ok(())
    }

    /// Stops kube-apiserver (SIGTERM, waited for) and starts it again on the same port with the
    /// same etcd, PKI and token; returns once `/readyz` is ok again.
    ///
    /// Why: "the apiserver restarted mid-burst" tests; resource versions continue from etcd and
    /// clients reconnect with the same kubeconfig.
    pub fn restart_apiserver(&self) -> Result<()> {
        self.stop_apiserver()?;
        self.start_apiserver()
    }

    /// Whether kube-apiserver's process is running. Why: assert a restart or kill happened.
    pub fn apiserver_running(&self) -> bool {
        lock(&self.apiserver)
            .as_mut()
            .map(|d| d.is_running())
            .unwrap_or(false)
    }

    /// The apiserver's PID while it runs. Why: SIGSTOP it to make the API hang, not refuse.
    pub fn apiserver_pid(&self) -> Option<u32> {
        lock(&self.apiserver).as_ref().map(|d| d.pid())
    }

    /// Starts kube-controller-manager (if not running). It needs no port, so it is "started"
    /// once spawned; it runs its controllers as soon as it has synced its informers.
    ///
    /// Why: tests that killed it with
    /// [`kill_controller_manager`](Self::kill_controller_manager) bring it back.
    pub fn start_controller_manager(&self) -> Result<()> {
        let mut guard = lock(&self.controller_manager);
        if let Some(d) = guard.as_mut() {
            if d.is_running() {
                return Ok(());
            }
        }
        let mut cmd = netns_command(
            self.opts.netns.as_deref(),
            kube_binary(&self.bin_dir, "kube-controller-manager")?,
        );
        no_proxy(&mut cmd);
        cmd.args(self.controller_manager_args());
        let mut daemon = Daemon::spawn_with(
            "kube-controller-manager",
            cmd,
            Some(&self.controller_manager_log()),
            &self.opts.spawn,
        )?;
        std::thread::sleep(Duration::from_millis(200));
        if let Some(st) = daemon.try_status() {
            bail!(
                "kube-controller-manager exited at once ({st}); log {}:\n{}",
                self.controller_manager_log().display(),
                daemon.log_tail(30)
            );
        }
        *guard = Some(daemon);
        Ok(())
    }

    /// SIGKILLs kube-controller-manager. Why: tests that need controllers to stay still (no
    /// ReplicaSets, no endpoint updates) or that simulate its crash.
    pub fn kill_controller_manager(&self) -> Result<()> {
        if let Some(mut d) = lock(&self.controller_manager).take() {
            d.kill();
        }
        Ok(())
    }

    /// Whether kube-controller-manager's process is running. Why: assert it did not crash.
    pub fn controller_manager_running(&self) -> bool {
        lock(&self.controller_manager)
            .as_mut()
            .map(|d| d.is_running())
            .unwrap_or(false)
    }

    /// Waits until ServiceAccount `default` exists in `namespace` with a token secret.
    ///
    /// Why: the ServiceAccount admission plugin refuses pods until then; a test that creates a
    /// namespace and then pods in it calls this first (the controller-manager must run).
    pub fn wait_default_service_account(&self, namespace: &str, timeout: Duration) -> Result<()> {
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/default");
        let start = Instant::now();
        loop {
            let last: String = match self.request("GET", &path, None) {
                Ok(r) if r.status == 200 => {
                    let v = r.json()?;
                    if v["secrets"].as_array().is_some_and(|s| !s.is_empty()) {
                        return Ok(());
                    }
                    "no token secret yet".into()
                }
                Ok(r) => format!("HTTP {}", r.status),
                Err(e) => format!("{e:#}"),
            };
            if !self.opts.controller_manager || !self.controller_manager_running() {
                bail!(
                    "kube-controller-manager is not running; log {}:\n{}",
                    self.controller_manager_log().display(),
                    self.controller_manager_log_tail(30)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "ServiceAccount {namespace}/default not ready after {timeout:?} ({last}); \
                     controller-manager log {}:\n{}",
                    self.controller_manager_log().display(),
                    self.controller_manager_log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Path of the kubeconfig (server, CA data, admin token; context `berth-test`, namespace
    /// `default`).
    ///
    /// Why: the file any client takes: kube-rs `Kubeconfig::read_from`, `kubectl --kubeconfig`,
    /// the controller-manager itself.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server URL, `https://127.0.0.1:PORT`. Why: clients built without the kubeconfig.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The apiserver's port (fixed for the life of this control plane, across restarts).
    ///
    /// Why: tests that look at sockets or build URLs by hand.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bearer token of user `admin` in group `system:masters`. Why: raw HTTP clients.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The CA certificate (PEM) that signed the apiserver's serving certificate (SANs
    /// 127.0.0.1, ::1, localhost). Always `Some`: the harness makes its own PKI.
    ///
    /// Why: clients verify the server for real instead of skipping verification.
    pub fn ca_pem(&self) -> Option<&Path> {
        Some(&self.tls.ca)
    }

    /// The etcd cluster (one member) the apiserver stores into.
    ///
    /// Why: tests may kill or stop etcd under the apiserver, or read raw keys under `/registry`.
    pub fn etcd(&self) -> &EtcdCluster {
        self.etcd
            .as_ref()
            .expect("etcd is present until the control plane is released")
    }

    /// The service-account signing key (PKCS#8 PEM). Why: tests that mint tokens themselves.
    pub fn service_account_key(&self) -> &Path {
        &self.sa_key
    }

    /// The control plane's temp dir (logs, PKI, kubeconfig), removed on Drop.
    ///
    /// Why: a place for a test's own files that goes away with the control plane.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates (or replaces) the documents of the multi-document YAML file `path` whose kind is in
    /// `kinds` (all when `None`), in file order; returns `Kind/name` of each applied document.
    ///
    /// Why: the tests must run Berth with the RBAC that ships in deploy/, read from the file
    /// itself, so a rule missing there fails a test instead of only failing users.
    pub fn apply_manifest(&self, path: &Path, kinds: Option<&[&str]>) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        let mut applied = vec![];
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc)
                .with_context(|| format!("a document of {} is not valid YAML", path.display()))?;
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap_or("").to_string();
            if kinds.is_some_and(|k| !k.contains(&kind.as_str())) {
                continue;
            }
            let name = v["metadata"]["name"]
                .as_str()
                .ok_or_else(|| anyhow!("a {kind} in {} has no metadata.name", path.display()))?
                .to_string();
            let coll = collection_path(&v)?;
            let r = self.request("POST", &coll, Some(&v))?;
            if r.status == 409 {
                let cur = self.request("GET", &format!("{coll}/{name}"), None)?.ok()?;
                let mut next = v.clone();
                next["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                self.request("PUT", &format!("{coll}/{name}"), Some(&next))?
                    .ok()
                    .with_context(|| format!("replacing {kind} {name}"))?;
            } else {
                r.ok()
                    .with_context(|| format!("creating {kind} {name} from {}", path.display()))?;
            }
            applied.push(format!("{kind}/{name}"));
        }
        Ok(applied)
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API
    /// (`serviceaccounts/token`), valid for `ttl` (at least 10 minutes).
    ///
    /// Why: a process of the test must authenticate as that ServiceAccount, exactly as a pod does
    /// with its projected token; no token Secret (and so no controller-manager) is needed.
    pub fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": ttl.as_secs().max(600)}
        });
        let v = self
            .request(
                "POST",
                &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
                Some(&body),
            )?
            .ok()
            .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{name}"))?;
        v["status"]["token"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{name} returned no token: {v}"))
    }

    /// Writes a kubeconfig for ServiceAccount `namespace/name` (a token minted by
    /// [`service_account_token`](Self::service_account_token), valid 24 h; default namespace
    /// `namespace`) into this control plane's dir and returns its path.
    ///
    /// Why: Berth's processes take `--kubeconfig`; with this one they act with exactly the rights
    /// RBAC gives the ServiceAccount, as in a cluster.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.service_account_token(namespace, name, Duration::from_secs(86400))?;
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{namespace}-{name}"));
        self.write_kubeconfig_for(
            &path,
            &format!("system:serviceaccount:{namespace}:{name}"),
            &token,
            namespace,
        )?;
        Ok(path)
    }

    /// Path of the apiserver's audit log (requests of ServiceAccounts only, JSON lines).
    ///
    /// Why: [`forbidden_requests`](Self::forbidden_requests) reads it; a failing test can show it.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("kube-apiserver-audit.log")
    }

    /// Every request of a ServiceAccount that the apiserver answered with 403 so far, as
    /// `user verb URI (reason) at TIME`, in order, except those received while an apiserver was
    /// starting (spawned, `/readyz` not yet ok).
    ///
    /// Why: a role missing a rule may not fail loudly (a watch refused is retried forever and the
    /// feature it feeds is silently off); a test asserts this is empty to prove the roles suffice
    /// for every path it exercised. A starting kube-apiserver serves requests before its RBAC
    /// authorizer has read the roles and refuses them all (403 with no reason), which says nothing
    /// about the roles; those are in [`forbidden_while_starting`](Self::forbidden_while_starting).
    pub fn forbidden_requests(&self) -> Result<Vec<String>> {
        Ok(self.forbidden()?.0)
    }

    /// The 403s [`forbidden_requests`](Self::forbidden_requests) leaves out: received while an
    /// apiserver was starting. Why: a test may show them, or assert they stay within a restart.
    pub fn forbidden_while_starting(&self) -> Result<Vec<String>> {
        Ok(self.forbidden()?.1)
    }

    fn forbidden(&self) -> Result<(Vec<String>, Vec<String>)> {
        let starts = lock(&self.starts).clone();
        let starting = |t: &str| {
            starts
                .iter()
                .any(|(from, to)| t >= from.as_str() && to.as_deref().is_none_or(|to| t <= to))
        };
        let text = match std::fs::read_to_string(self.audit_log()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
            Err(e) => return Err(e).context("reading the audit log"),
        };
        let (mut out, mut early) = (vec![], vec![]);
        for line in text.lines() {
            let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if ev["responseStatus"]["code"].as_u64() == Some(403) {
                let at = ev["requestReceivedTimestamp"].as_str().unwrap_or("");
                let s = format!(
                    "{} {} {} ({}) at {at}",
                    ev["user"]["username"].as_str().unwrap_or("?"),
                    ev["verb"].as_str().unwrap_or("?"),
                    ev["requestURI"].as_str().unwrap_or("?"),
                    ev["annotations"]["authorization.k8s.io/reason"]
                        .as_str()
                        .or(ev["responseStatus"]["message"].as_str())
                        .unwrap_or("")
                );
                if starting(at) {
                    early.push(s);
                } else {
                    out.push(s);
                }
            }
        }
        Ok((out, early))
    }

    /// Path of kube-apiserver's log (appended across restarts). Why: attach to failures.
    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.path().join("kube-apiserver.log")
    }

    /// Path of kube-controller-manager's log (appended across restarts). Why: attach to failures.
    pub fn controller_manager_log(&self) -> PathBuf {
        self.dir.path().join("kube-controller-manager.log")
    }

    /// The last `n` lines of the apiserver log. Why: error messages quote the tail.
    pub fn apiserver_log_tail(&self, n: usize) -> String {
        tail(&self.apiserver_log(), n)
    }

    /// The last `n` lines of the controller-manager log. Why: error messages quote the tail.
    pub fn controller_manager_log_tail(&self, n: usize) -> String {
        tail(&self.controller_manager_log(), n)
    }

    /// How long each part of `start()` took. Why: judge the cost of one control plane per test.
    pub fn timings(&self) -> KubeTimings {
        self.timings
    }

    /// A `curl` command preset for this apiserver: CA verification, bearer token, silent, no
    /// proxy, 30 s limit. Append `-X`, `-d` and the URL.
    ///
    /// Why: tests and debugging need HTTP access without a Kubernetes client in the dependency
    /// tree; curl is on every Debian machine (installed by `hack/install-deps.sh`).
    pub fn curl(&self) -> Command {
        let mut cmd = netns_command(self.opts.netns.as_deref(), tool("curl"));
        no_proxy(&mut cmd);
        cmd.arg("-sS")
            .arg("--max-time")
            .arg("30")
            .arg("--cacert")
            .arg(&self.tls.ca)
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token));
        cmd
    }

    /// Sends one request to the apiserver (`path` like `/api/v1/nodes`, optional JSON body sent
    /// as `application/json`, or `application/merge-patch+json` for PATCH) and returns status
    /// and body. Errors only when the server cannot be reached.
    ///
    /// Why: tests create Nodes, Pods, CRDs and objects and read them back without a client
    /// library; HTTP errors come back as a status, so tests can assert on 404 or 409.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<ApiResponse> {
        let mut cmd = self.curl();
        cmd.arg("-X").arg(method);
        cmd.arg("-w").arg("\n%{http_code}");
        if body.is_some() {
            let ct = if method.eq_ignore_ascii_case("PATCH") {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            cmd.arg("-H")
                .arg(format!("Content-Type: {ct}"))
                .arg("--data-binary")
                .arg("@-");
            cmd.stdin(Stdio::piped());
        } else {
            cmd.stdin(Stdio::null());
        }
        cmd.arg(format!("{}{}", self.server(), path));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let line = show(&cmd);
        let mut child = cmd.spawn().with_context(|| format!("spawning `{line}`"))?;
        if let Some(b) = body {
            use std::io::Write;
            let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("curl stdin"))?;
            stdin.write_all(b.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{method} {path}: curl failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text
            .rsplit_once('\n')
            .ok_or_else(|| anyhow!("{method} {path}: no status in curl output"))?;
        let status = code
            .trim()
            .parse()
            .with_context(|| format!("{method} {path}: bad status `{code}`"))?;
        Ok(ApiResponse {
            status,
            body: body.to_string(),
        })
    }

    /// Runs `kubectl --kubeconfig=...` with `args` (kubectl from the cache dir if built there,
    /// else from PATH) and returns stdout.
    ///
    /// Why: quick manual-style checks in tests and debugging; not required by the harness.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let local = self.bin_dir.join("kubectl");
        let prog = if local.is_file() {
            local
        } else {
            tool("kubectl")
        };
        let mut cmd = netns_command(self.opts.netns.as_deref(), prog);
        no_proxy(&mut cmd);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args);
        let out = run_checked(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `t` as the audit log writes timestamps (`2006-01-02T15:04:05.000000Z`, UTC), so the two
/// compare as strings. Why: no date library for one format.
fn audit_time(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// The first host address of an IPv4 CIDR (the `kubernetes` Service's ClusterIP).
fn first_service_ip(cidr: &str) -> Result<String> {
    let (net, _) = cidr
        .split_once('/')
        .ok_or_else(|| anyhow!("service CIDR `{cidr}` is not ADDR/LEN"))?;
    let net: std::net::Ipv4Addr = net
        .parse()
        .with_context(|| format!("service CIDR `{cidr}` is not an IPv4 CIDR"))?;
    Ok(std::net::Ipv4Addr::from(u32::from(net) + 1).to_string())
}

fn tail(p: &Path, n: usize) -> String {
    let log = std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for KubeControlPlane {
    fn drop(&mut self) {
        // Controllers first (they would log errors against a vanished apiserver), then the
        // apiserver; etcd and the temp dir go when their fields drop.
        if let Some(mut d) = lock(&self.scheduler).take() {
            d.kill();
        }
        if let Some(mut d) = lock(&self.controller_manager).take() {
            d.kill();
        }
        if let Some(mut d) = lock(&self.apiserver).take() {
            d.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn audit_times_compare_as_the_apiserver_writes_them() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(audit_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_796_176_567_958_418);
        assert_eq!(audit_time(t), "2026-12-02T01:56:07.958418Z");
        // 2000-02-29 (a leap day of a century leap year).
        assert_eq!(
            audit_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn missing_binaries_name_the_build_command() {
        let d = tempfile::tempdir().unwrap();
        let e = KubeControlPlane::builder()
            .bin_dir(d.path())
            .start()
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("cargo xtask kube build"), "{msg}");
        assert!(msg.contains("kube-apiserver"), "{msg}");
    }
}
