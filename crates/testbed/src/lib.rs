//! `berth-testbed`: the test world for Berth's integration tests.
//!
//! The world itself (namespaces, fabrics, etcd, the Kubernetes control plane, real nodes) lives
//! in `berth-lab`, which the `berth` binary ships for `berth lab`; this crate re-exports it and
//! adds what only tests need: a CNI runtime that plays containerd, and up-front checks that fail
//! loudly instead of skipping.
//!
//! Why this crate exists: the ledger, CNI plugin and node agent must be tested against the real
//! things they meet in production (etcd, network namespaces, bridges, CNI runtimes), on one
//! shared machine, in parallel, without ever touching the host's network. This crate starts and
//! tears down those things under strict rules:
//!
//! - daemons run under `setsid`, are tracked by PID, and are killed on Drop (also on panic) and
//!   when the test process dies (parent-death signal);
//! - namespaces, temp dirs and cluster tokens carry the PID and a counter, so cargo test threads
//!   and nextest processes never collide; ports are always found free, never fixed;
//! - test links live only inside namespaces the harness created; addresses come only from
//!   198.18.0.0/15 and 2001:db8::/32 (other addresses are refused).
//!
//! Start every integration test with [`require_root_and_tools`]: tests fail loudly, never skip.
//!
//! ```no_run
//! use berth_testbed::{require_root_and_tools, EtcdCluster};
//! require_root_and_tools();
//! let etcd = EtcdCluster::start(3).unwrap();          // or Etcd::start(), Etcd::start_tls()
//! etcd.etcdctl_run(&["put", "k", "v"]).unwrap();
//! let leader = etcd.leader_index().unwrap();
//! etcd.kill_member(leader).unwrap();                 // SIGKILL; stop_member = SIGTERM + wait
//! etcd.restart_member(leader).unwrap();              // same ports, same data dir
//! ```
//!
//! A node with a pod, running a CNI plugin chain as a runtime would:
//!
//! ```no_run
//! use berth_testbed::{pod_netns, Cni, CniTarget, Fabric};
//! use serde_json::json;
//! let fabric = Fabric::new("lan").unwrap();
//! let node = fabric.node("node1", &["198.18.0.11/24"]).unwrap();
//! let pod = pod_netns("pod").unwrap();
//! // In another crate's integration test, put the freshly built plugin first:
//! // Cni::debian().with_dir_first(Path::new(env!("CARGO_BIN_EXE_berth-ipam")).parent().unwrap())
//! let cni = Cni::debian().in_node(&node);
//! let conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge", "bridge": "cni0",
//!     "isGateway": true,
//!     "ipam": {"type": "host-local", "dataDir": "/tmp/some-test-dir",
//!              "ranges": [[{"subnet": "198.18.10.0/24"}]]}});
//! let target = CniTarget::new("ctr1", &pod, "eth0").with_k8s_pod("default", "web-0", "uid-1");
//! let out = cni.add(&target, &conf).unwrap();
//! let result = out.ok().unwrap();                    // parsed JSON; out.elapsed is the latency
//! println!("{:?}", pod.addr_list("eth0").unwrap());   // ["198.18.10.2/24", "fe80::…/64"]
//! ```
//!
//! BGP peers: BIRD, FRR (zebra + bfdd + bgpd) and gobgpd in namespaces on a fabric:
//!
//! ```no_run
//! use berth_testbed::{require_root, require_tools, Bird, Fabric, Netns, BGP_TOOLS};
//! require_root();
//! require_tools(BGP_TOOLS);
//! let fabric = Fabric::new("bgp").unwrap();
//! let router = Netns::new("router").unwrap();
//! router.lo_up().unwrap();
//! router.disable_dad().unwrap();                      // link-local next hops usable at once
//! fabric.attach(&router, "eth0", &["198.18.0.1/24", "2001:db8::1/64"]).unwrap();
//! let dir = tempfile::tempdir().unwrap();
//! let bird = Bird::start(&router, dir.path(), "bird", "router id 198.18.0.1;\n").unwrap();
//! println!("{}", bird.birdc("show protocols"));
//! ```
//!
//! A real Kubernetes control plane (kube-apiserver + kube-controller-manager v1.20.2, built once
//! with `cargo xtask kube build`), its own etcd, on a free loopback port:
//!
//! ```no_run
//! use berth_testbed::{require_kube_binaries, KubeControlPlane};
//! use serde_json::json;
//! require_kube_binaries();                            // fails loudly, naming the build command
//! let cp = KubeControlPlane::start().unwrap();       // ~8 s; cp.timings() tells
//! // kube-rs: Config::from_custom_kubeconfig(Kubeconfig::read_from(cp.kubeconfig())?, &Default::default())
//! let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}});
//! assert_eq!(cp.request("POST", "/api/v1/nodes", Some(&node)).unwrap().status, 201);
//! cp.restart_apiserver().unwrap();                   // same port, same etcd: objects survive
//! ```

mod check;
mod cni;
mod l2;
pub mod release;
mod routers;

pub use berth_lab::{
    check_test_addr, find_tool, free_ports, is_test_addr, kube_bin_dir, pod_netns,
    require_kube_binaries, run, run_checked, sweep_stale, tool, unique_name, wait_for, ApiResponse,
    Daemon, Etcd, EtcdBuilder, EtcdCluster, Fabric, KubeBuilder, KubeControlPlane, KubeTimings,
    Netns, TlsFiles, FABRIC_BRIDGE, KUBE_CONTROLLERS, KUBE_SERVICE_CIDR, KUBE_VERSION, NAME_PREFIX,
    RBAC_KINDS,
};
pub use check::{require_root, require_root_and_tools, require_tools, DEFAULT_TOOLS};
pub use cni::{
    result_ips, with_prev_result, Cni, CniCommand, CniOutput, CniTarget, DEBIAN_CNI_DIR,
};
pub use l2::{
    epoch, in_netns, loadavg, Announcer, ArpAnswer, ArpWatch, CpuHog, Outage, Reply, UdpEcho,
    UdpProber, VipLab, ECHO_PORT, LAB_METRICS_PORT, LAB_VIP, LAB_VIP6,
};
pub use routers::{Bird, Frr, Gobgpd, BGP_TOOLS};

#[cfg(test)]
mod tests {
    /// Harness objects are shared between test threads (e.g. one cluster per test binary).
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::EtcdCluster>();
        check::<crate::Etcd>();
        check::<crate::Netns>();
        check::<crate::Fabric>();
        check::<crate::Cni>();
        check::<crate::KubeControlPlane>();
        fn check_send<T: Send>() {}
        check_send::<crate::Daemon>();
    }
}
