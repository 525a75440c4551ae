//! Running CNI plugins the way a container runtime does.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use berth_lab::tool;
use berth_lab::Netns;

/// Directory of Debian's CNI plugins (containernetworking-plugins 1.1.1).
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// The CNI operation, passed as `CNI_COMMAND`.
///
/// Why: typed, so tests cannot misspell a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// `ADD`: attach a container to the network.
    Add,
    /// `DEL`: detach and release.
    Del,
    /// `CHECK`: verify an earlier ADD.
    Check,
    /// `VERSION`: report supported spec versions.
    Version,
    /// `GC` (spec 1.1): release what no listed attachment holds.
    Gc,
    /// `STATUS` (spec 1.1): is the plugin ready for ADDs.
    Status,
}

impl CniCommand {
    /// The wire spelling. Why: the value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
            CniCommand::Gc => "GC",
            CniCommand::Status => "STATUS",
        }
    }
}

/// What a plugin run produced.
///
/// Why: tests assert on the exit status, the parsed result or error JSON, stderr and the
/// latency, all at once.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// The plugin's exit status.
    pub status: ExitStatus,
    /// Raw stdout.
    pub stdout: String,
    /// Stdout parsed as JSON (`None` if empty or not JSON). On failure this is the CNI error
    /// object (`code`, `msg`, `details`).
    pub json: Option<Value>,
    /// Raw stderr (plugins log here).
    pub stderr: String,
    /// Wall time from spawn to exit (includes `ip netns exec` when run in a node namespace).
    pub elapsed: Duration,
}

impl CniOutput {
    /// Whether the plugin exited 0. Why: the runtime's notion of success.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The parsed result on success; on failure an error holding status, stdout and stderr.
    ///
    /// Why: `cni.add(...)?.ok()?` is the short path when a test expects success.
    pub fn ok(&self) -> Result<Value> {
        if !self.success() {
            bail!(
                "CNI plugin failed ({}):\nstdout: {}\nstderr: {}",
                self.status,
                self.stdout.trim(),
                self.stderr.trim()
            );
        }
        Ok(self.json.clone().unwrap_or(Value::Null))
    }
}

/// One invocation's parameters apart from the command and the config.
///
/// Why: ADD, DEL and CHECK need the same container identity; build it once, reuse it.
#[derive(Debug, Clone)]
pub struct CniTarget {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the pod namespace path, e.g. `/run/netns/POD`.
    pub netns: PathBuf,
    /// `CNI_IFNAME`, e.g. `eth0`.
    pub ifname: String,
    /// `CNI_ARGS` (`K=V;K=V`), e.g. `K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0`.
    pub args: Option<String>,
}

impl CniTarget {
    /// A target for `pod` with interface `ifname` and the given container ID.
    ///
    /// Why: the common construction, from a [`Netns`] made by [`crate::pod_netns`].
    pub fn new(container_id: &str, pod: &Netns, ifname: &str) -> CniTarget {
        CniTarget {
            container_id: container_id.to_string(),
            netns: pod.path(),
            ifname: ifname.to_string(),
            args: None,
        }
    }

    /// Sets `CNI_ARGS`. Why: Kubernetes passes the pod's namespace/name/UID this way.
    pub fn with_args(mut self, args: &str) -> CniTarget {
        self.args = Some(args.to_string());
        self
    }

    /// Sets `CNI_ARGS` for a Kubernetes pod the way the kubelet/containerd do.
    ///
    /// Why: Berth's IPAM keys sticky claims on these values.
    pub fn with_k8s_pod(self, namespace: &str, name: &str, uid: &str) -> CniTarget {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
             K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={uid}",
            self.container_id
        );
        self.with_args(&args)
    }
}

/// A CNI "runtime": a search path for plugins and, optionally, the node namespace to run in.
///
/// Why: tests of `berth-ipam` (alone or chained behind Debian's `bridge`) must execute plugins
/// exactly as containerd would: env vars, config on stdin, result on stdout, inside the node.
#[derive(Debug, Clone)]
pub struct Cni {
    path: Vec<PathBuf>,
    node: Option<String>,
    timeout: Duration,
    extra_env: Vec<(String, String)>,
}

impl Cni {
    /// A runtime whose `CNI_PATH` is `dirs` in order (first match wins).
    ///
    /// Why: put the project's build dir (with `berth-ipam`) before `/usr/lib/cni`.
    pub fn new<I, P>(dirs: I) -> Cni
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        Cni {
            path: dirs.into_iter().map(Into::into).collect(),
            node: None,
            timeout: Duration::from_secs(60),
            extra_env: Vec::new(),
        }
    }

    /// A runtime with only Debian's plugins (`/usr/lib/cni`). Why: harness self-tests.
    pub fn debian() -> Cni {
        Cni::new([DEBIAN_CNI_DIR])
    }

    /// Adds `dir` at the front of `CNI_PATH`. Why: test a freshly built plugin first.
    pub fn with_dir_first(mut self, dir: impl Into<PathBuf>) -> Cni {
        self.path.insert(0, dir.into());
        self
    }

    /// Runs plugins inside `node` (`ip netns exec NODE plugin`) rather than the test's namespace.
    ///
    /// Why: main plugins create bridges and host-side veths in the namespace they run in; that
    /// must be a node namespace, never the host.
    pub fn in_node(mut self, node: &Netns) -> Cni {
        self.node = Some(node.name().to_string());
        self
    }

    /// Kills a plugin that runs longer than `t` (default 60 s). Why: a hung plugin must fail
    /// the test, not hang CI.
    pub fn timeout(mut self, t: Duration) -> Cni {
        self.timeout = t;
        self
    }

    /// Sets an extra environment variable for plugins. Why: e.g. a plugin's own socket path.
    pub fn env(mut self, key: &str, value: &str) -> Cni {
        self.extra_env.push((key.to_string(), value.to_string()));
        self
    }

    /// The `CNI_PATH` value (dirs joined by `:`). Why: debugging and chained-plugin tests.
    pub fn cni_path(&self) -> String {
        self.path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Finds `plugin` (a binary name) in the search path.
    ///
    /// Why: fail with the list of dirs searched when a plugin was not built or installed.
    pub fn find(&self, plugin: &str) -> Result<PathBuf> {
        self.path
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("CNI plugin `{plugin}` not found in {}", self.cni_path()))
    }

    /// Runs plugin `conf["type"]` with `command` for `target`, config `conf` on stdin.
    ///
    /// Why: the general entry point; [`Self::add`], [`Self::del`], [`Self::check`] wrap it.
    /// A non-zero exit is not an `Err`: it is returned in [`CniOutput`] for assertions.
    pub fn exec(
        &self,
        command: CniCommand,
        target: Option<&CniTarget>,
        conf: &Value,
    ) -> Result<CniOutput> {
        let plugin = conf["type"]
            .as_str()
            .ok_or_else(|| anyhow!("CNI config has no string `type`: {conf}"))?;
        self.exec_plugin(plugin, command, target, conf)
    }

    /// Like [`Self::exec`] but with the plugin binary named explicitly.
    ///
    /// Why: run an IPAM plugin directly with a full network config, as a main plugin would.
    pub fn exec_plugin(
        &self,
        plugin: &str,
        command: CniCommand,
        target: Option<&CniTarget>,
        conf: &Value,
    ) -> Result<CniOutput> {
        let bin = self.find(plugin)?;
        let mut cmd = match &self.node {
            Some(node) => {
                let mut c = Command::new(tool("ip"));
                c.args(["netns", "exec", node]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_PATH", self.cni_path());
        if let Some(t) = target {
            cmd.env("CNI_CONTAINERID", &t.container_id)
                .env("CNI_NETNS", &t.netns)
                .env("CNI_IFNAME", &t.ifname);
            if let Some(a) = &t.args {
                cmd.env("CNI_ARGS", a);
            }
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stdin_bytes = serde_json::to_vec(conf)?;
        run_with_timeout(cmd, &stdin_bytes, self.timeout)
            .with_context(|| format!("running CNI plugin {} {}", bin.display(), command.as_str()))
    }

    /// `ADD`. Why: attach a pod; check `.ok()` for the result JSON.
    pub fn add(&self, target: &CniTarget, conf: &Value) -> Result<CniOutput> {
        self.exec(CniCommand::Add, Some(target), conf)
    }

    /// `DEL`. Pass the ADD result as `prevResult` in `conf` if the plugin wants it.
    ///
    /// Why: detach a pod; DEL must succeed even when repeated.
    pub fn del(&self, target: &CniTarget, conf: &Value) -> Result<CniOutput> {
        self.exec(CniCommand::Del, Some(target), conf)
    }

    /// `CHECK` (conf must carry `prevResult`). Why: verify an attachment.
    pub fn check(&self, target: &CniTarget, conf: &Value) -> Result<CniOutput> {
        self.exec(CniCommand::Check, Some(target), conf)
    }

    /// `VERSION` (no container). Why: spec-version negotiation tests.
    pub fn version(&self, conf: &Value) -> Result<CniOutput> {
        self.exec(CniCommand::Version, None, conf)
    }
}

/// Adds `prevResult` to a config, as runtimes do for DEL/CHECK and chained plugins.
///
/// Why: building the second call of a test from the first call's result.
pub fn with_prev_result(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    if let Some(o) = c.as_object_mut() {
        o.insert("prevResult".into(), prev.clone());
    }
    c
}

fn run_with_timeout(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Result<CniOutput> {
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let mut sin = child.stdin.take().expect("piped stdin");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = sin.write_all(&input);
        // Dropping closes stdin, so the plugin sees EOF.
    });
    let mut sout = child.stdout.take().expect("piped stdout");
    let mut serr = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = sout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = serr.read_to_end(&mut b);
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            // Our own unreaped child: its PID is still ours.
            let _ = child.kill();
            let s = child.wait()?;
            // The reader threads are left detached: a grandchild may still hold the pipes.
            drop((writer, out_t, err_t));
            bail!("CNI plugin timed out after {timeout:?} and was killed ({s})");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let elapsed = start.elapsed();
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    let json = if stdout.trim().is_empty() {
        None
    } else {
        serde_json::from_str(&stdout).ok()
    };
    Ok(CniOutput {
        status,
        stdout,
        json,
        stderr,
        elapsed,
    })
}

/// Collects the `ADDR/LEN` strings of a CNI result's `ips` list.
///
/// Why: compare what the plugin reported with what landed in the namespace.
pub fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str().map(str::to_string))
        .collect()
}
