//! What a real node is made of: the directories bind-mounted into its mount namespace, and the
//! configuration of its containerd, kubelet and kube-proxy.
//!
//! Why: pure functions from a [`NodeSpec`] to files, so the recipe that works on this kind of
//! machine (`shared/testbed.md`, "A real node") is written down once and unit-tested; the world
//! (`world.rs`) only writes the files and starts the processes.

use std::path::{Path, PathBuf};

/// Directories that every node has for itself: bind-mounted from the node's own directory over
/// the host path, inside the node's mount namespace.
///
/// Why: three nodes share one filesystem. hostPath volumes (Berth's DaemonSet writes the CNI
/// plugin and its conflist, the agent its socket), the kubelet's and containerd's state, pod
/// logs and CNI results must be per node, as on real machines.
pub const NODE_DIRS: &[&str] = &[
    "/var/lib/kubelet",
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/lib/berth",
    "/run/berth",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/run/containerd",
    "/var/lib/containerd",
];

/// Machine-wide sysctls kubelet v1.20 rewrites at start, with the values it wants.
///
/// Why: inside the node's mount namespace these `/proc/sys` files are bind-mounted over by
/// files already holding these values, so kubelet finds them set and the host keeps its own.
pub const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The directory name under a node's dir that backs `path` (`/var/lib/kubelet` →
/// `var-lib-kubelet`).
pub fn backing_name(path: &str) -> String {
    path.trim_start_matches('/').replace('/', "-")
}

/// Quotes `s` for a POSIX shell (single quotes).
fn sq(s: &Path) -> String {
    format!("'{}'", s.display().to_string().replace('\'', "'\\''"))
}

/// The shell script that, run inside a node's fresh mount namespace, puts every
/// [`NODE_DIRS`] entry in place from the node's backing directories.
///
/// A directory the host lacks is never created on the host: its deepest existing ancestor is
/// "shadowed" inside the node's namespace (a tmpfs over it, with every original entry bound
/// back in), and the directory is made in that tmpfs. So the host's filesystem is only written
/// below the lab's state dir, and one lab's teardown never removes a mount point another lab
/// (or the host) uses.
pub fn mount_script(n: &NodeSpec) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut shadows: Vec<PathBuf> = Vec::new();
    for d in NODE_DIRS {
        let mut a = Path::new(d);
        while !a.exists() {
            a = a
                .parent()
                .context("a node dir without an existing ancestor")?;
        }
        if a != Path::new(d) && a != Path::new("/") && !shadows.iter().any(|s| s == a) {
            shadows.push(a.to_path_buf());
        }
    }
    // Every mount is `-n` (no utab): libmount would otherwise create `/run/mount` on the host
    // (the namespace still sees the host's /run until its shadow is moved over it) and then
    // fail the move over /run with "failed to update userspace mount table" (exit 16), which
    // a machine whose /run/mount already exists never shows.
    let mut s = String::from("set -e\n");
    for a in &shadows {
        let stage = n
            .dir
            .join("shadow")
            .join(backing_name(&a.display().to_string()));
        std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
        // A tmpfs made aside, filled with every entry of the original (bound, recursively,
        // while the original is still visible), then moved over it.
        s.push_str(&format!(
            "mount -n -t tmpfs -o mode=755 berth-lab-shadow {}\n",
            sq(&stage)
        ));
        let mut entries: Vec<_> = std::fs::read_dir(a)
            .with_context(|| format!("reading {}", a.display()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let (orig, dst) = (a.join(&name), stage.join(&name));
            let ft = e
                .file_type()
                .with_context(|| format!("stat {}", e.path().display()))?;
            if ft.is_symlink() {
                let target = std::fs::read_link(e.path())?;
                s.push_str(&format!("ln -s {} {}\n", sq(&target), sq(&dst)));
                continue;
            }
            if ft.is_dir() {
                s.push_str(&format!("mkdir {}\n", sq(&dst)));
            } else {
                s.push_str(&format!(": > {}\n", sq(&dst)));
            }
            // The entry holding the lab's own state is bound without its submounts (the
            // nodes' mount namespace files), so no namespace holds another's.
            let flag = if n.dir.starts_with(&orig) {
                "--bind"
            } else {
                "--rbind"
            };
            s.push_str(&format!("mount -n {flag} {} {}\n", sq(&orig), sq(&dst)));
        }
        s.push_str(&format!("mount -n --move {} {}\n", sq(&stage), sq(a)));
    }
    for d in NODE_DIRS {
        s.push_str(&format!("mkdir -p {}\n", sq(Path::new(d))));
        s.push_str(&format!(
            "mount -n --bind {} {}\n",
            sq(&n.backing(d)),
            sq(Path::new(d))
        ));
    }
    Ok(s)
}

/// One node's facts. Why: every generator takes the same description.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node name (= its network namespace name, = the Node object's name).
    pub name: String,
    /// InternalIP (IPv4, on `eth0`).
    pub ip: String,
    /// The node's own directory (backing dirs, configs, logs).
    pub dir: PathBuf,
    /// Where the apiserver is reached (`https://198.18.0.2:6443`).
    pub server: String,
    /// The cgroup root kubelet puts pods under (same path in every hierarchy).
    pub cgroup_root: String,
    /// The pod sandbox image.
    pub pause_image: String,
    /// The CA that signed the apiserver's certificate (PEM path).
    pub ca: PathBuf,
    /// The cluster's Service CIDR. Why: kube-proxy's view of what is a ClusterIP.
    pub service_cidr: String,
    /// The pod address range, for kube-proxy's masquerade decisions.
    pub cluster_cidr: String,
}

impl NodeSpec {
    /// The host path that backs `path` for this node.
    pub fn backing(&self, path: &str) -> PathBuf {
        self.dir.join("fs").join(backing_name(path))
    }

    /// containerd's socket as seen inside the node's mount namespace.
    pub fn containerd_socket(&self) -> &'static str {
        "/run/containerd/containerd.sock"
    }

    /// The socket's host path (the backing dir of `/run/containerd`).
    pub fn containerd_socket_on_host(&self) -> PathBuf {
        self.backing("/run/containerd").join("containerd.sock")
    }
}

/// containerd 1.6's configuration for a lab node.
///
/// Why (each setting is a fact of this machine, see `shared/testbed.md`):
/// `restrict_oom_score_adj` because the machine lacks CAP_SYS_RESOURCE; no AppArmor; network
/// namespaces under the state dir (per node, not /run/netns); cgroupfs, not systemd; CNI from
/// the node's `/opt/cni/bin` and `/etc/cni/net.d`, where Berth's DaemonSet installs itself.
pub fn containerd_config(n: &NodeSpec) -> String {
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = 0

[grpc]
  address = "{sock}"

[debug]
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
"#,
        sock = n.containerd_socket(),
        pause = n.pause_image,
    )
}

/// A kubeconfig for a node component authenticating with a bearer token.
pub fn token_kubeconfig(server: &str, ca: &Path, token: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    \
         certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {user}\n\
         current-context: lab\n",
        ca = ca.display()
    )
}

/// The kubelet's configuration file (KubeletConfiguration v1beta1).
///
/// Why: cgroup v1 without systemd (`cgroupfs` under the lab's `cgroupRoot`), swap tolerated,
/// node status every 2 s (fast Ready), the apiserver authenticated by the lab's CA (x509) and
/// allowed to call every kubelet API (logs, exec), no eviction or image GC driven by the host's
/// shared disk (it would delete the imported images: there is no registry to pull them back).
pub fn kubelet_config(n: &NodeSpec) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
cgroupRoot: {root}
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
nodeStatusUpdateFrequency: 2s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 20s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%"
  imagefs.available: "0%"
  nodefs.inodesFree: "0%"
resolvConf: {resolv}
clusterDomain: cluster.local
makeIPTablesUtilChains: true
protectKernelDefaults: false
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
"#,
        ip = n.ip,
        root = n.cgroup_root,
        resolv = n.dir.join("resolv.conf").display(),
        ca = n.ca.display(),
    )
}

/// The kubelet's command line (without the binary).
pub fn kubelet_args(n: &NodeSpec) -> Vec<String> {
    let d = &n.dir;
    vec![
        format!("--config={}", d.join("kubelet.yaml").display()),
        format!("--kubeconfig={}", d.join("kubelet.kubeconfig").display()),
        "--container-runtime=remote".into(),
        format!(
            "--container-runtime-endpoint=unix://{}",
            n.containerd_socket()
        ),
        "--runtime-request-timeout=5m".into(),
        format!("--node-ip={}", n.ip),
        format!("--hostname-override={}", n.name),
        format!("--pod-infra-container-image={}", n.pause_image),
        "--root-dir=/var/lib/kubelet".into(),
        "--v=1".into(),
        "--logtostderr=true".into(),
    ]
}

/// kube-proxy's configuration (KubeProxyConfiguration v1alpha1): iptables mode, and conntrack
/// limits left alone (`maxPerCore: 0`, `min: 0`, timeouts 0) because they are machine-wide.
pub fn kube_proxy_config(n: &NodeSpec) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kc}
mode: iptables
hostnameOverride: {name}
bindAddress: {ip}
clusterCIDR: {cluster}
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  masqueradeAll: false
  syncPeriod: 30s
  minSyncPeriod: 0s
"#,
        kc = n.dir.join("kube-proxy.kubeconfig").display(),
        name = n.name,
        ip = n.ip,
        cluster = n.cluster_cidr,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NodeSpec {
        NodeSpec {
            name: "lab-node1".into(),
            ip: "198.18.0.11".into(),
            dir: "/run/berth-lab/nodes/lab-node1".into(),
            server: "https://198.18.0.2:6443".into(),
            cgroup_root: "/berth-lab/lab-node1".into(),
            pause_image: "berth.dev/lab/pause:lab".into(),
            ca: "/run/berth-lab/cp/pki/ca.pem".into(),
            service_cidr: "198.18.16.0/20".into(),
            cluster_cidr: "198.18.64.0/18".into(),
        }
    }

    #[test]
    fn every_node_dir_has_its_own_backing() {
        let n = spec();
        let mut seen = std::collections::HashSet::new();
        for d in NODE_DIRS {
            let b = n.backing(d);
            assert!(b.starts_with(&n.dir), "{}", b.display());
            assert!(seen.insert(b), "two dirs share a backing");
        }
        assert_eq!(backing_name("/var/lib/kubelet"), "var-lib-kubelet");
    }

    #[test]
    fn missing_dirs_are_made_in_a_shadow_never_on_the_host() {
        let d = tempfile::tempdir().unwrap();
        let mut n = spec();
        n.dir = d.path().to_path_buf();
        let s = mount_script(&n).unwrap();
        for dir in NODE_DIRS {
            assert!(s.contains(&format!(
                "mount -n --bind '{}' '{dir}'",
                n.backing(dir).display()
            )));
            if !Path::new(dir).exists() {
                // Its parent chain ends in an existing dir that is shadowed by a tmpfs first.
                let mut a = Path::new(dir);
                while !a.exists() {
                    a = a.parent().unwrap();
                }
                if a != Path::new("/") {
                    let t = format!("' '{}'\n", a.display());
                    assert!(s.contains("mount -n --move"), "{s}");
                    let at = s.find(&t).unwrap_or_else(|| panic!("{a:?} not shadowed"));
                    assert!(at < s.find(&format!("mkdir -p '{dir}'")).unwrap());
                }
            }
        }
        assert_eq!(sq(Path::new("a'b")), "'a'\\''b'");
    }

    #[test]
    fn configs_carry_the_recipe() {
        let n = spec();
        let c = containerd_config(&n);
        for must in [
            "restrict_oom_score_adj = true",
            "disable_apparmor = true",
            "netns_mounts_under_state_dir = true",
            "SystemdCgroup = false",
            "sandbox_image = \"berth.dev/lab/pause:lab\"",
            "bin_dir = \"/opt/cni/bin\"",
        ] {
            assert!(c.contains(must), "containerd config lacks {must}");
        }
        let k = kubelet_config(&n);
        for must in [
            "cgroupDriver: cgroupfs",
            "cgroupRoot: /berth-lab/lab-node1",
            "failSwapOn: false",
            "nodeStatusUpdateFrequency: 2s",
            "address: 198.18.0.11",
            "imageGCHighThresholdPercent: 100",
        ] {
            assert!(k.contains(must), "kubelet config lacks {must}");
        }
        let p = kube_proxy_config(&n);
        assert!(p.contains("mode: iptables") && p.contains("maxPerCore: 0"));
        assert!(kubelet_args(&n).contains(&"--node-ip=198.18.0.11".to_string()));
    }
}
