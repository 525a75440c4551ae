//! Up-front checks that the machine can run the test world; they fail loudly, never skip.

use berth_lab::find_tool;

/// Tools every harness-based test needs: iproute2, ping, etcd, etcdctl, the Debian CNI plugins.
///
/// Why: one list, so a missing package is reported before any test does half its setup.
pub const DEFAULT_TOOLS: &[&str] = &[
    "ip",
    "ping",
    "etcd",
    "etcdctl",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/loopback",
];

/// Panics unless the process runs as root and every tool in [`DEFAULT_TOOLS`] exists.
///
/// Why: namespace and etcd tests cannot do anything useful without them, and a test that
/// silently skips hides a broken CI machine. The panic names the missing piece and the fix
/// (`hack/install-deps.sh`). Call it first in every integration test that uses the harness.
pub fn require_root_and_tools() {
    require_root();
    require_tools(DEFAULT_TOOLS);
}

/// Panics unless the effective user is root (network namespaces need CAP_SYS_ADMIN/NET_ADMIN).
///
/// Why: fail loudly with the reason instead of an obscure `ip netns add` error.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "berth-testbed: these tests must run as root (euid is {euid}): they create network \
             namespaces and start daemons. Run them as root, as CI does (after `hack/install-deps.sh`)."
        );
    }
}

/// Panics unless every named tool exists (names are looked up in PATH and the sbin dirs;
/// absolute paths are checked as given).
///
/// Why: tests that need extra daemons (`bird`, `gobgpd`, `/usr/lib/frr/zebra`, `keepalived`)
/// state so up front and fail loudly when one is missing.
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if !missing.is_empty() {
        panic!(
            "berth-testbed: missing required tool(s): {}. Install the test world with \
             `sudo bash hack/install-deps.sh` (Debian 12) from the repository root; tests never skip.",
            missing.join(", ")
        );
    }
}
