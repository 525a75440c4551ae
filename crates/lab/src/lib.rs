//! `berth-lab`: Berth's lab world on one machine.
//!
//! Why this crate exists: Berth must be shown and tested against the real things it meets in
//! production (etcd, a Kubernetes control plane, nodes running containerd, kubelet and
//! kube-proxy, network namespaces, bridges), on one shared machine, without ever touching the
//! host's network. `berth lab up` is a user command and the tests must run the very same code,
//! so the world is a library the `berth` binary ships; `berth-testbed` builds the test-only
//! pieces (CNI runtime, up-front checks) on top of it.
//!
//! The rules every part follows:
//!
//! - daemons run under `setsid`, are tracked by PID (and start time, for detached worlds), and
//!   are killed on Drop or by `lab down` from the recorded state;
//! - links live only inside namespaces this crate created; addresses come only from
//!   198.18.0.0/15 and 2001:db8::/32 (other addresses are refused);
//! - names carry a prefix (`lab` for `berth lab`, a unique one per test), so two worlds never
//!   collide.

pub mod cgroup;
pub mod deploy;
mod etcd;
pub mod image;
mod kube;
mod net;
pub mod node;
mod process;
pub mod programs;
pub mod state;
mod tls;
mod util;
mod world;

pub use etcd::{Etcd, EtcdBuilder, EtcdCluster};
pub use kube::{
    kube_bin_dir, require_kube_binaries, ApiResponse, KubeBuilder, KubeControlPlane, KubeTimings,
    KUBE_CONTROLLERS, KUBE_SERVICE_CIDR, KUBE_VERSION, RBAC_KINDS,
};
pub use net::{pod_netns, Fabric, Netns, FABRIC_BRIDGE};
pub use process::{Daemon, SpawnOpts};
pub use tls::TlsFiles;
pub use util::{
    check_test_addr, find_tool, free_ports, in_netns, is_test_addr, netns_command, run,
    run_checked, sweep_stale, tool, unique_name, wait_for, NAME_PREFIX,
};
pub use world::{
    addr, agent_answers, agent_pids, Deploy, Lab, LabConfig, LabNode, DEFAULT_PREFIX,
    DEFAULT_STATE_DIR,
};
