//! Small shared helpers: unique names, free ports, tool lookup, checked command runs, polling.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Prefix of every kernel-visible name (namespaces, cluster tokens) the harness creates, so a
/// leftover can be traced back to the harness and swept (see [`sweep_stale`]).
pub const NAME_PREFIX: &str = "bt-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Returns a name unique to this process and call: `bt-<pid>-<n>-<label>`.
///
/// Why: cargo runs tests as threads of one process and nextest as many processes at once, so
/// every namespace or temp name must carry both the PID and a per-process counter to never clash.
/// The label is trimmed to keep namespace names readable and short.
pub fn unique_name(label: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(16)
        .collect();
    let label = if label.is_empty() {
        "x".to_string()
    } else {
        label
    };
    format!("{NAME_PREFIX}{}-{n}-{label}", std::process::id())
}

/// Ports this process has already handed out, so two callers never get the same one even if the
/// kernel offers it again after the probing socket closed.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns `n` distinct free TCP ports on 127.0.0.1.
///
/// Why: daemons must never use fixed ports, since parallel test processes would collide. The
/// ports are found by binding port 0, all probing sockets are held until every port is known (so
/// the kernel cannot hand the same one twice), and ports given out earlier in this process are
/// skipped. Another process can still grab a port before the daemon binds it, so callers retry
/// start on collision.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut given = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        if tries > 10 * n + 100 {
            bail!("could not find {n} free loopback ports");
        }
        let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        held.push(l);
        if given.contains(&port) || ports.contains(&port) {
            continue;
        }
        ports.push(port);
    }
    given.extend(ports.iter().copied());
    Ok(ports)
}

/// Finds an executable by name in `PATH` and the sbin directories, or checks an absolute path.
///
/// Why: CI may run with a `PATH` lacking `/usr/sbin` (where `ip` lives), and the harness must say
/// exactly which tool is missing rather than fail with a bare "No such file".
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
}

/// Returns the path of a required tool, panicking with install advice when it is missing.
///
/// Why: tests must fail loudly, never skip, when the machine lacks a dependency.
pub fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "berth-testbed: required tool `{name}` not found (PATH and /usr/sbin, /sbin searched). \
             Run `sudo bash hack/install-deps.sh` from the repository root to install the test world."
        )
    })
}

/// Formats a command line for error messages.
pub(crate) fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion with stdin closed and returns its output, failing on a non-zero
/// exit with the command line, status, stdout and stderr in the error.
///
/// Why: every setup step of the harness must either work or say precisely what went wrong.
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning `{}`", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs a program with arguments (resolved with [`tool`]) and returns its stdout as a string.
///
/// Why: the shortest way for harness code and tests to run one checked command.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run_checked(Command::new(tool(program)).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every `interval` until it returns `Some`, or fails after `timeout` naming `what`.
///
/// Why: every wait in a test must be bounded and say what it was waiting for when it gives up.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(anyhow!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(interval);
    }
}

/// Tells whether an address lies in the ranges tests may use inside namespaces:
/// 198.18.0.0/15 (RFC 2544) and 2001:db8::/32 (documentation), plus loopback.
///
/// Why: test traffic must never reach a real network; the harness refuses any other address.
pub fn is_test_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 198 && (o[1] == 18 || o[1] == 19)) || v4.is_loopback()
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] == 0x2001 && s[1] == 0x0db8) || v6.is_loopback()
        }
    }
}

/// Parses `ADDR` or `ADDR/LEN` and fails unless the address is a test address
/// (see [`is_test_addr`]).
///
/// Why: one check used by every helper that puts an address on an interface or sends packets.
pub fn check_test_addr(s: &str) -> Result<IpAddr> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = a
        .parse()
        .with_context(|| format!("`{s}` is not an IP address"))?;
    if let Some(l) = len {
        let l: u8 = l
            .parse()
            .with_context(|| format!("bad prefix length in `{s}`"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let min = if ip.is_ipv4() { 15 } else { 32 };
        if l > max || l < min {
            bail!("prefix length of `{s}` must lie in {min}..={max} so the subnet stays inside the test ranges");
        }
    }
    if !is_test_addr(ip) {
        bail!("`{s}` is outside the test ranges 198.18.0.0/15 and 2001:db8::/32: refused");
    }
    Ok(ip)
}

/// A command that runs `program` inside network namespace `netns` (`nsenter --net=...`), or on
/// the host when `netns` is `None`.
///
/// Why: daemons of the lab's control plane run in a namespace of their own. `nsenter` (unlike
/// `ip netns exec`) keeps the caller's mount namespace, so `/sys/fs/cgroup` stays visible, and
/// it execs the program, so the recorded PID is the daemon's.
pub fn netns_command(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new(tool("nsenter"));
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `netns` (or on a plain thread when
/// `None`) and returns its result.
///
/// Why: health checks of daemons in a namespace (etcd's `/health`, a TCP connect) from Rust,
/// without a helper process. Network namespace membership is per thread, and a socket keeps the
/// namespace it was created in.
pub fn in_netns<T: Send>(netns: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let Some(ns) = netns else { return Ok(f()) };
    let path = Path::new("/run/netns").join(ns);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on an fd we own, affecting only this (scoped) thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow!(
                    "setns into {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("a thread in netns {ns} panicked"))?
    })
}

/// A working directory: a temp dir removed on Drop, or a kept one (a lab's state dir).
///
/// Why: test control planes clean up after themselves; `berth lab up` keeps its files for
/// `berth lab down`.
#[derive(Debug)]
pub(crate) enum Workdir {
    /// Removed on Drop.
    Temp(tempfile::TempDir),
    /// Left in place.
    Kept(PathBuf),
}

impl Workdir {
    /// A temp dir named after `name`, or `dir` (created) when given.
    pub(crate) fn new(name: &str, dir: Option<&Path>) -> Result<Workdir> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                Ok(Workdir::Kept(d.to_path_buf()))
            }
            None => Ok(Workdir::Temp(
                tempfile::Builder::new()
                    .prefix(&format!("{name}-"))
                    .tempdir()
                    .context("creating a temp dir")?,
            )),
        }
    }

    /// The directory. Why: every file of its owner lives under it.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Workdir::Temp(t) => t.path(),
            Workdir::Kept(p) => p,
        }
    }
}

/// Fails, naming every missing program and the fix, unless the tools a lab runs exist.
///
/// Why: `berth lab up` and the tests fail before they make anything when the machine lacks
/// containerd, socat, BIRD or the Kubernetes build.
pub(crate) fn require_tools_for_lab(cfg: &crate::world::LabConfig) -> Result<()> {
    let mut missing: Vec<String> = [
        "ip",
        "nsenter",
        "unshare",
        "socat",
        "bird",
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "etcd",
        "curl",
        "iptables",
        "mount",
    ]
    .iter()
    .filter(|t| find_tool(t).is_none())
    .map(|t| t.to_string())
    .collect();
    for b in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "kubectl",
    ] {
        if find_tool(&cfg.kube_bin.join(b).display().to_string()).is_none() {
            missing.push(cfg.kube_bin.join(b).display().to_string());
        }
    }
    if !Path::new("/usr/lib/cni/bridge").exists() {
        missing.push("/usr/lib/cni/bridge".into());
    }
    if !missing.is_empty() {
        bail!(
            "the lab needs {}: install them with `sudo bash hack/install-deps.sh` and build \
             Kubernetes v1.20.2 with `sudo bash hack/kube-build.sh` (or `cargo xtask kube build`)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The PID encoded in a harness name `bt-<pid>-…`, if `name` is one.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NAME_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Whether the harness name `name` belongs to a process that no longer exists.
fn owner_is_dead(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes what test processes that died without running Drop left behind: directories in the
/// temp dir named `bt-<pid>-…` whose `<pid>` no longer exists (a lab's state dir is torn down
/// from its record first), and namespaces in `/run/netns` named so. Returns what was removed.
///
/// Why: a test process killed by SIGKILL (a nextest timeout, an OOM kill) cannot clean up; its
/// daemons die with it (parent-death signal) but names and files stay. The next harness user in
/// any process sweeps them. Anything of a live process is never touched.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    // Temp dirs first: a dead test's lab is torn down from its state file (its processes in
    // the lab's cgroups, mounts, namespaces) before its directory goes.
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir || !owner_is_dead(&name) {
                continue;
            }
            if path.join(crate::state::STATE_FILE).exists() {
                match crate::state::teardown(&path) {
                    Ok(t) if t.leftovers.is_empty() => {
                        removed.push(format!("lab {}", path.display()));
                        continue;
                    }
                    Ok(t) => eprintln!(
                        "berth-lab: stale lab {} left: {}",
                        path.display(),
                        t.leftovers.join("; ")
                    ),
                    Err(e) => eprintln!("berth-lab: stale lab {}: {e:#}", path.display()),
                }
                continue;
            }
            if std::fs::remove_dir_all(&path).is_ok() {
                removed.push(path.display().to_string());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !owner_is_dead(&name) {
                continue;
            }
            let ok = Command::new(tool("ip"))
                .args(["netns", "del", &name])
                .stdin(Stdio::null())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                removed.push(format!("/run/netns/{name}"));
            }
        }
    }
    removed
}

/// Runs [`sweep_stale`] once per process, before the first namespace or cluster is created.
pub(crate) fn sweep_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let removed = sweep_stale();
        if !removed.is_empty() {
            eprintln!(
                "berth-testbed: removed leftovers of dead test processes: {}",
                removed.join(" ")
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_carry_pid() {
        let a = unique_name("etcd");
        let b = unique_name("etcd");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("bt-{}-", std::process::id())));
        assert!(unique_name("we/ird name!").ends_with("-weirdname"));
        assert_eq!(owner_pid(&a), Some(std::process::id()));
        assert!(!owner_is_dead(&a));
        assert!(owner_is_dead("bt-4294967295-0-x"));
        assert_eq!(owner_pid("other-1-2"), None);
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports(20).unwrap();
        let q = free_ports(20).unwrap();
        let all: HashSet<u16> = p.iter().chain(q.iter()).copied().collect();
        assert_eq!(all.len(), 40);
    }

    #[test]
    fn only_test_addresses_pass() {
        for ok in [
            "198.18.0.1",
            "198.19.255.254/24",
            "2001:db8::1/64",
            "198.18.0.0/15",
            "127.0.0.1",
        ] {
            check_test_addr(ok).unwrap();
        }
        for bad in [
            "10.0.0.1",
            "192.168.1.1/24",
            "8.8.8.8",
            "198.20.0.1",
            "2001:db9::1",
            "198.18.0.0/8",
            "fe80::1/64",
            "junk",
        ] {
            assert!(check_test_addr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn wait_for_times_out_with_message() {
        let e = wait_for(
            "nothing",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || None::<()>,
        )
        .unwrap_err();
        assert!(e.to_string().contains("nothing"));
    }
}
