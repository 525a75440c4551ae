//! L2 failover instruments: a UDP echo on each node, a client probing a VIP every few
//! milliseconds, an ARP watcher that records which MACs answer for an address, and cutting a
//! node off the others on the fabric's bridge while the client still reaches it.
//!
//! Why: failover tests and the L2 benchmark measure outage as the client sees it (the gap
//! between the last reply before a failure and the first after), and split brain as the LAN
//! sees it (two MACs answering ARP for one address).

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use berth_lab::check_test_addr;
use berth_lab::Daemon;
use berth_lab::{Fabric, Netns};
use berth_netlink::packet::{ArpOp, ArpPacket};
use berth_netlink::Mac;

/// Seconds since the Unix epoch, as tcpdump's `-tt` prints them.
///
/// Why: one time base for probe replies, ARP captures and the moments failures are injected.
pub fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs `f` on a new thread inside `ns`; the caller's threads never change namespace.
///
/// Why: sockets belong to the namespace they are created in, so the test process can own
/// sockets "on" a node or client without running a helper process there.
pub fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = ns.path();
    std::thread::spawn(move || -> Result<T> {
        let fd = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns on this thread only, with an fd we own.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setns into {}", path.display()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("thread in {} panicked", ns.name()))?
}

/// A UDP echo on a node: answers every datagram with the node's tag and the datagram.
///
/// Why: the client learns not only that the VIP answered but *which node* did.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    mute: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Binds `0.0.0.0:port` (or `[::]:port`, which is dual-stack) inside `ns` and answers
    /// with `tag`.
    pub fn start(ns: &Netns, port: u16, v6: bool, tag: &str) -> Result<UdpEcho> {
        let bind: SocketAddr = if v6 {
            format!("[::]:{port}").parse()?
        } else {
            format!("0.0.0.0:{port}").parse()?
        };
        let sock = in_netns(ns, move || UdpSocket::bind(bind))??;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mute = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let m2 = mute.clone();
        let tag = tag.as_bytes().to_vec();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if m2.load(Ordering::Relaxed) {
                        continue;
                    }
                    let mut out = buf[..n.min(16)].to_vec();
                    out.extend_from_slice(&tag);
                    let _ = sock.send_to(&out, from);
                }
            }
        });
        Ok(UdpEcho {
            stop,
            mute,
            thread: Some(thread),
        })
    }

    /// Stops (or resumes) answering at once. Why: a node's service dies with the node, at the
    /// same instant as its announcer, while `ip addr del` takes milliseconds.
    pub fn mute(&self, on: bool) {
        self.mute.store(on, Ordering::Relaxed);
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One answered probe.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Sequence number of the probe.
    pub seq: u64,
    /// When the probe was sent (epoch seconds).
    pub sent: f64,
    /// When the reply arrived (epoch seconds).
    pub received: f64,
    /// The answering node's tag.
    pub tag: String,
}

/// A gap in the replies.
#[derive(Debug, Clone)]
pub struct Outage {
    /// The last reply before the gap.
    pub last_before: Reply,
    /// The first reply after it.
    pub first_after: Reply,
}

impl Outage {
    /// The gap's length: the outage as the client sees it.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64((self.first_after.received - self.last_before.received).max(0.0))
    }
}

/// A client that sends a UDP probe to `target` every `interval` and records the replies.
///
/// Why: measures failover as users see it; the probe interval bounds the resolution.
pub struct UdpProber {
    stop: Arc<AtomicBool>,
    replies: Arc<Mutex<Vec<Reply>>>,
    sent: Arc<Mutex<u64>>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpProber {
    /// Starts probing from inside `client`.
    pub fn start(client: &Netns, target: SocketAddr, interval: Duration) -> Result<UdpProber> {
        check_test_addr(&target.ip().to_string())?;
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let sock = in_netns(client, move || UdpSocket::bind(bind))??;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let rx = sock.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(0u64));
        let (s1, s2) = (stop.clone(), stop.clone());
        let r2 = replies.clone();
        let sent2 = sent.clone();
        let tx = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seq = 0u64;
            while !s1.load(Ordering::Relaxed) {
                let mut b = seq.to_be_bytes().to_vec();
                b.extend_from_slice(&epoch().to_be_bytes());
                let _ = sock.send_to(&b, target);
                seq += 1;
                *sent2.lock().unwrap_or_else(|e| e.into_inner()) = seq;
                let next = start + interval * seq as u32;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        });
        let rxt = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, _)) = rx.recv_from(&mut buf) {
                    let received = epoch();
                    if n < 16 {
                        continue;
                    }
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&buf[..8]);
                    let seq = u64::from_be_bytes(a);
                    a.copy_from_slice(&buf[8..16]);
                    let sent = f64::from_be_bytes(a);
                    let tag = String::from_utf8_lossy(&buf[16..n]).into_owned();
                    r2.lock().unwrap_or_else(|e| e.into_inner()).push(Reply {
                        seq,
                        sent,
                        received,
                        tag,
                    });
                }
            }
        });
        Ok(UdpProber {
            stop,
            replies,
            sent,
            threads: vec![tx, rxt],
        })
    }

    /// The replies so far, in arrival order.
    pub fn replies(&self) -> Vec<Reply> {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Probes sent so far.
    pub fn sent(&self) -> u64 {
        *self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a reply with a tag in `tags` arrives after `after` (epoch), up to `limit`.
    pub fn wait_reply(&self, after: f64, tags: &[&str], limit: Duration) -> Option<Reply> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            let found = self
                .replies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .rev()
                .take_while(|r| r.received > after)
                .find(|r| tags.is_empty() || tags.contains(&r.tag.as_str()))
                .cloned();
            if found.is_some() {
                return found;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// The longest gap between consecutive replies that ends after `from` (epoch).
    ///
    /// Why: a failure injected at `from` shows as the largest gap after it; gaps that ended
    /// before it belong to an earlier trial.
    pub fn outage_after(&self, from: f64) -> Option<Outage> {
        let r = self.replies();
        let mut best: Option<Outage> = None;
        for w in r.windows(2) {
            if w[1].received < from {
                continue;
            }
            let o = Outage {
                last_before: w[0].clone(),
                first_after: w[1].clone(),
            };
            if best.as_ref().is_none_or(|b| o.duration() > b.duration()) {
                best = Some(o);
            }
        }
        best
    }

    /// Stops the threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for UdpProber {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One ARP reply seen on the client: when, and which MAC said it holds the address.
#[derive(Debug, Clone, PartialEq)]
pub struct ArpAnswer {
    /// Epoch seconds (tcpdump's timestamp).
    pub at: f64,
    /// The MAC in the reply's sender field, lower case.
    pub mac: String,
}

/// Broadcast ARP requests for one address from a client every `interval` (from a raw socket
/// of the test's own), and a capture of every ARP reply for it (tcpdump on the client).
///
/// Why: the LAN's view of split brain: if two nodes answer in the same window, two MACs show
/// up; the kernel's own answers (an orphaned address) show up too.
pub struct ArpWatch {
    tcpdump: Daemon,
    requester: ArpRequester,
    ip: IpAddr,
}

/// Broadcasts an ARP request for one address every `interval` from a raw packet socket in a
/// namespace, until stopped.
///
/// Why: iputils' `arping` refuses intervals under a second (`-i 0.01` exits at once), and
/// the client's kernel asks only when its neighbour entry goes stale, so neither shows
/// within milliseconds which nodes answer for an address.
struct ArpRequester {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ArpRequester {
    fn start(
        ns: &Netns,
        dev: &str,
        target: std::net::Ipv4Addr,
        interval: Duration,
    ) -> Result<Self> {
        let mac: Mac = ns
            .link(dev)?
            .and_then(|l| l["address"].as_str().map(str::to_string))
            .ok_or_else(|| anyhow!("{} has no {dev}", ns.name()))?
            .parse()?;
        let src: std::net::Ipv4Addr = ns
            .addr_list(dev)?
            .iter()
            .find_map(|a| a.split('/').next()?.parse().ok())
            .ok_or_else(|| anyhow!("{dev} in {} has no IPv4 address", ns.name()))?;
        let frame = ArpPacket {
            eth_dst: Mac::BROADCAST,
            eth_src: mac,
            op: ArpOp::Request,
            sha: mac,
            spa: src,
            tha: Mac::ZERO,
            tpa: target,
        }
        .encode();
        // The socket belongs to the namespace it is opened in; the thread sending on it
        // need not be there.
        let dev_c = std::ffi::CString::new(dev)?;
        let sock = in_netns(ns, move || arp_socket(&dev_c))??;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: frame outlives the call; the socket is bound, so send(2) suffices.
                unsafe {
                    libc::send(
                        sock.as_raw_fd(),
                        frame.as_ptr() as *const libc::c_void,
                        frame.len(),
                        0,
                    )
                };
                std::thread::sleep(interval);
            }
        });
        Ok(ArpRequester {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ArpRequester {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An AF_PACKET socket for ARP frames bound to `dev` in the calling thread's namespace.
fn arp_socket(dev: &std::ffi::CStr) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ARP as u16).to_be() as i32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening an AF_PACKET socket");
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: dev is a valid C string.
    let index = unsafe { libc::if_nametoindex(dev.as_ptr()) };
    if index == 0 {
        bail!("no interface {dev:?}");
    }
    // SAFETY: a zeroed sockaddr_ll is valid; the fields that matter are set.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    sll.sll_ifindex = index as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("binding to {dev:?}"));
    }
    Ok(sock)
}

impl ArpWatch {
    /// Starts watching `ip` from `client` on `dev`.
    pub fn start(client: &Netns, dev: &str, ip: IpAddr, interval: Duration) -> Result<ArpWatch> {
        check_test_addr(&ip.to_string())?;
        let tcpdump = client.spawn("tcpdump", ["-l", "-n", "-e", "-tt", "-i", dev, "arp"], None)?;
        // Let tcpdump open its socket before the first request.
        let t0 = Instant::now();
        while !tcpdump.log().contains("listening on") && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let IpAddr::V4(target) = ip else {
            bail!("ArpWatch watches IPv4 (ARP) addresses; {ip} is IPv6");
        };
        let requester = ArpRequester::start(client, dev, target, interval)?;
        Ok(ArpWatch {
            tcpdump,
            requester,
            ip,
        })
    }

    /// Every reply for the address captured so far.
    pub fn answers(&self) -> Vec<ArpAnswer> {
        let needle = format!("Reply {} is-at ", self.ip);
        self.tcpdump
            .log()
            .lines()
            .filter_map(|l| {
                let at: f64 = l.split_whitespace().next()?.parse().ok()?;
                let rest = &l[l.find(&needle)? + needle.len()..];
                let mac = rest.split([',', ' ']).next()?.to_lowercase();
                Some(ArpAnswer { at, mac })
            })
            .collect()
    }

    /// Waits until `mac` has answered (up to `limit`). Why: the capture must be running
    /// before a failure is injected.
    pub fn wait_answer(&self, mac: &str, limit: Duration) -> Result<()> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.answers().iter().any(|a| a.mac == mac) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("no ARP answer from {mac} for {} within {limit:?}", self.ip)
    }

    /// The distinct MACs that answered within [`from`, `to`] (epoch seconds).
    pub fn macs_between(&self, from: f64, to: f64) -> BTreeSet<String> {
        self.answers()
            .into_iter()
            .filter(|a| a.at >= from && a.at <= to)
            .map(|a| a.mac)
            .collect()
    }

    /// How often the answering MAC changed since `from` (epoch): a handover is one change;
    /// two nodes answering at once show as changes back and forth.
    pub fn switches(&self, from: f64) -> usize {
        let a: Vec<ArpAnswer> = self
            .answers()
            .into_iter()
            .filter(|a| a.at >= from)
            .collect();
        a.windows(2).filter(|w| w[0].mac != w[1].mac).count()
    }

    /// The largest number of distinct MACs answering within any window of `window` that
    /// starts at or after `from`. With a window shorter than the request interval, more than
    /// one means two nodes answered the same request.
    pub fn max_macs_in_window(&self, from: f64, window: Duration) -> (usize, BTreeSet<String>) {
        let a: Vec<ArpAnswer> = self
            .answers()
            .into_iter()
            .filter(|a| a.at >= from)
            .collect();
        let mut best = (0, BTreeSet::new());
        for (i, x) in a.iter().enumerate() {
            let set: BTreeSet<String> = a[i..]
                .iter()
                .take_while(|y| y.at <= x.at + window.as_secs_f64())
                .map(|y| y.mac.clone())
                .collect();
            if set.len() > best.0 {
                best = (set.len(), set);
            }
        }
        best
    }

    /// The answers of the first `window` after `from` in which more than one MAC answered,
    /// as `(seconds after from, mac)`, with the 100 ms of answers before it; empty if none.
    ///
    /// Why: a test that finds two MACs says when, and what led up to it (a handover, a cut).
    pub fn overlap(&self, from: f64, window: Duration) -> Vec<(f64, String)> {
        let a: Vec<ArpAnswer> = self
            .answers()
            .into_iter()
            .filter(|a| a.at >= from)
            .collect();
        for (i, x) in a.iter().enumerate() {
            let end = x.at + window.as_secs_f64();
            let macs: std::collections::BTreeSet<&str> = a[i..]
                .iter()
                .take_while(|y| y.at <= end)
                .map(|y| y.mac.as_str())
                .collect();
            if macs.len() > 1 {
                return a
                    .iter()
                    .filter(|y| y.at >= x.at - 0.1 && y.at <= end)
                    .map(|y| (y.at - from, y.mac.clone()))
                    .collect();
            }
        }
        vec![]
    }

    /// Stops capturing; the answers stay readable.
    pub fn stop(&mut self) {
        self.requester.stop();
        std::thread::sleep(Duration::from_millis(50));
        self.tcpdump.terminate(Duration::from_secs(1));
    }
}

/// Busy loops on every CPU, each a process of its own (`sh -c 'while :; do :; done'`),
/// killed on Drop.
///
/// Why: "no false failover with both cores saturated" needs a hog the test starts and stops
/// itself (and kills by its own recorded PIDs).
pub struct CpuHog {
    procs: Vec<Daemon>,
}

impl CpuHog {
    /// `n` busy processes (0: one per CPU).
    pub fn start(n: usize) -> Result<CpuHog> {
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(2, |p| p.get())
        } else {
            n
        };
        let mut procs = Vec::new();
        for i in 0..n {
            let mut cmd = std::process::Command::new(berth_lab::tool("sh"));
            cmd.args(["-c", "while :; do :; done"]);
            procs.push(Daemon::spawn(&format!("cpuhog{i}"), cmd, None)?);
        }
        Ok(CpuHog { procs })
    }

    /// The hogs' PIDs.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid()).collect()
    }
}

/// Every process below `pid` (children, their children…), from `/proc/*/stat`.
///
/// Why: daemons such as keepalived fork workers into process groups of their own; a failure
/// test must reach them, and only them.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // The command may contain spaces and parentheses: the fields follow the last ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(x) = frontier.pop() {
        for (c, pp) in &parent_of {
            if *pp == x && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

/// The 1-minute load average (`/proc/loadavg`).
///
/// Why: benchmarks on a shared machine print it with every table.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Which announcer a [`VipLab`] runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Announcer {
    /// `berth vip` with extra TOML keys (e.g. `heartbeat = "10ms"`).
    Berth {
        /// The `berth` binary.
        bin: std::path::PathBuf,
        /// Extra top-level keys for every node's configuration.
        extra: String,
    },
    /// Debian's keepalived, VRRP version and advertisement interval in seconds.
    Keepalived {
        /// 2 or 3.
        vrrp_version: u8,
        /// `advert_int`.
        advert_int: f64,
    },
}

/// A LAN for L2 failover: `n` nodes (198.18.0.11…) on a bridge, a client (198.18.0.100), an
/// optional gateway (198.18.0.1, the witness, forwarding as a router does), a UDP echo on every node answering with its
/// name, and the VIP 198.18.0.200 (and 2001:db8::200) announced by Berth or keepalived.
///
/// Why: the tests and `cargo xtask bench l2` run the very same world, side by side.
pub struct VipLab {
    /// The switch.
    pub fabric: Fabric,
    /// The client namespace.
    pub client: Netns,
    /// The gateway (witness) namespace, if any.
    pub gateway: Option<Netns>,
    /// Node namespaces, in order `n1`, `n2`, ….
    pub nodes: Vec<Netns>,
    /// Each node's bridge port.
    pub ports: Vec<String>,
    /// The client's bridge port.
    pub client_port: String,
    /// The gateway's bridge port.
    pub gateway_port: Option<String>,
    /// The running announcer per node.
    pub daemons: Vec<Option<Daemon>>,
    /// Berth's configs list the peers by name only (their addresses learnt from hellos).
    pub learn_peers: bool,
    echoes: Vec<UdpEcho>,
    dir: tempfile::TempDir,
    announcer: Option<Announcer>,
}

/// The VIP of every [`VipLab`].
pub const LAB_VIP: &str = "198.18.0.200";
/// The IPv6 VIP of every [`VipLab`].
pub const LAB_VIP6: &str = "2001:db8::200";
/// The UDP echo port on every node.
pub const ECHO_PORT: u16 = 7007;
/// The HTTP (metrics/status) port of `berth vip` in a lab node.
pub const LAB_METRICS_PORT: u16 = 9475;

impl VipLab {
    /// Builds the LAN (nothing announced yet).
    pub fn new(n: usize, gateway: bool) -> Result<VipLab> {
        let fabric = Fabric::new("l2")?;
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for i in 0..n {
            let a4 = format!("198.18.0.{}/24", 11 + i);
            let a6 = format!("2001:db8::{}/64", 11 + i);
            let (ns, port) = fabric.node_with_port(&format!("n{}", i + 1), &[&a4, &a6])?;
            nodes.push(ns);
            ports.push(port);
        }
        let (client, client_port) =
            fabric.node_with_port("client", &["198.18.0.100/24", "2001:db8::100/64"])?;
        let (gateway, gateway_port) = if gateway {
            let (g, p) = fabric.node_with_port("gw", &["198.18.0.1/24", "2001:db8::1/64"])?;
            // A gateway routes: it forwards what is sent to it for another host of the LAN
            // (the announcers' heartbeats relayed through the witness).
            g.sysctl("net.ipv4.ip_forward", "1")?;
            g.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            (Some(g), Some(p))
        } else {
            (None, None)
        };
        let mut echoes = Vec::new();
        for (i, ns) in nodes.iter().enumerate() {
            // One dual-stack socket serves IPv4 (mapped) and IPv6 probes.
            echoes.push(UdpEcho::start(ns, ECHO_PORT, true, &format!("n{}", i + 1))?);
        }
        Ok(VipLab {
            fabric,
            client,
            gateway,
            daemons: (0..n).map(|_| None).collect(),
            nodes,
            ports,
            client_port,
            gateway_port,
            echoes,
            dir: tempfile::tempdir()?,
            announcer: None,
            learn_peers: false,
        })
    }

    /// Node `i`'s name (`n1`…).
    pub fn name(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// The index of node `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')?
            .parse::<usize>()
            .ok()?
            .checked_sub(1)
    }

    /// Node `i`'s MAC on eth0, lower case.
    pub fn mac(&self, i: usize) -> Result<String> {
        let l = self.nodes[i]
            .link("eth0")?
            .ok_or_else(|| anyhow!("n{} has no eth0", i + 1))?;
        Ok(l["address"].as_str().unwrap_or("").to_lowercase())
    }

    /// Where node `i`'s files live.
    pub fn path(&self, what: &str) -> std::path::PathBuf {
        self.dir.path().join(what)
    }

    fn berth_config(&self, i: usize, extra: &str, v6: bool) -> String {
        let mut s = format!(
            "node = \"n{}\"\ninterface = \"eth0\"\nmetrics = \"127.0.0.1:{LAB_METRICS_PORT}\"\n{extra}\n",
            i + 1
        );
        if self.gateway.is_some()
            && !extra
                .lines()
                .any(|l| l.trim_start().starts_with("witness ="))
        {
            s.push_str("witness = \"198.18.0.1\"\n");
        }
        for j in 0..self.nodes.len() {
            if j != i && self.learn_peers {
                s.push_str(&format!("[[peer]]\nname = \"n{}\"\n", j + 1));
            } else if j != i {
                s.push_str(&format!(
                    "[[peer]]\nname = \"n{}\"\naddress = \"198.18.0.{}\"\n",
                    j + 1,
                    11 + j
                ));
            }
        }
        s.push_str(&format!("[[vip]]\naddress = \"{LAB_VIP}/24\"\n"));
        if v6 {
            s.push_str(&format!("[[vip]]\naddress = \"{LAB_VIP6}/64\"\n"));
        }
        s
    }

    fn keepalived_config(&self, i: usize, version: u8, advert: f64) -> String {
        // Distinct priorities, highest first: n1 is the master when all run.
        let prio = 200 - 50 * i;
        format!(
            "global_defs {{\n  router_id n{n}\n  vrrp_version {version}\n  script_user root\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
             priority {prio}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {LAB_VIP}/24 dev eth0\n  }}\n}}\n",
            n = i + 1
        )
    }

    /// Starts the announcer on node `i` (Berth: with IPv6 VIP too if `v6`).
    pub fn start(&mut self, i: usize, a: &Announcer, v6: bool) -> Result<()> {
        self.announcer = Some(a.clone());
        let log = self.path(&format!("n{}.log", i + 1));
        let d = match a {
            Announcer::Berth { bin, extra } => {
                let conf = self.path(&format!("n{}.toml", i + 1));
                std::fs::write(&conf, self.berth_config(i, extra, v6))?;
                let mut cmd = self.nodes[i].command(bin);
                cmd.args(["vip", "--config"]).arg(&conf);
                cmd.env("BERTH_LOG", "info");
                Daemon::spawn(&format!("berth-vip-n{}", i + 1), cmd, Some(&log))?
            }
            Announcer::Keepalived {
                vrrp_version,
                advert_int,
            } => {
                // A killed keepalived leaves its pid files, and its killed VRRP child may not be
                // reaped yet: keepalived would then refuse to start ("already running").
                for f in ["ka.pid", "ka-vrrp.pid"] {
                    let _ = std::fs::remove_file(self.path(&format!("n{}.{f}", i + 1)));
                }
                let conf = self.path(&format!("n{}.keepalived.conf", i + 1));
                std::fs::write(&conf, self.keepalived_config(i, *vrrp_version, *advert_int))?;
                let mut cmd = self.nodes[i].command(berth_lab::tool("keepalived"));
                cmd.args(["-n", "-l", "-D", "-P", "-f"])
                    .arg(&conf)
                    .arg("-p")
                    .arg(self.path(&format!("n{}.ka.pid", i + 1)))
                    .arg("-r")
                    .arg(self.path(&format!("n{}.ka-vrrp.pid", i + 1)));
                Daemon::spawn(&format!("keepalived-n{}", i + 1), cmd, Some(&log))?
            }
        };
        self.daemons[i] = Some(d);
        Ok(())
    }

    /// Starts the announcer on every node.
    pub fn start_all(&mut self, a: &Announcer, v6: bool) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.start(i, a, v6)?;
        }
        Ok(())
    }

    /// The announcer's log on node `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.path(&format!("n{}.log", i + 1))).unwrap_or_default()
    }

    /// SIGKILLs the announcer on node `i` and every process it started (keepalived's VRRP
    /// child first, so it cannot say goodbye: it would send a priority-0 advertisement when its
    /// parent dies), nothing cleaned up.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut d) = self.daemons[i].take() {
            let kids = descendants(d.pid());
            for pid in kids {
                // SAFETY: kill(2) on a descendant of our own recorded, unreaped child.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            d.kill();
        }
    }

    /// SIGTERMs the announcer on node `i` and waits for it to exit.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut d) = self.daemons[i].take() {
            d.terminate(Duration::from_secs(5));
        }
    }

    /// SIGSTOPs (`true`) or SIGCONTs the announcer on node `i` and every process it started
    /// (keepalived's VRRP child is the one that advertises).
    pub fn freeze(&mut self, i: usize, stop: bool) -> Result<()> {
        let d = self.daemons[i]
            .as_mut()
            .ok_or_else(|| anyhow!("no announcer on n{}", i + 1))?;
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        let kids = descendants(d.pid());
        if stop {
            for pid in &kids {
                // SAFETY: kill(2) on a descendant of our own recorded, unreaped child.
                unsafe { libc::kill(*pid as libc::pid_t, sig) };
            }
            d.signal(sig)
        } else {
            d.signal(sig)?;
            for pid in &kids {
                // SAFETY: as above.
                unsafe { libc::kill(*pid as libc::pid_t, sig) };
            }
            Ok(())
        }
    }

    /// Node `i`'s service (its UDP echo) stops answering at once (`true`) or answers again.
    pub fn mute(&self, i: usize, on: bool) {
        self.echoes[i].mute(on);
    }

    /// Node `i` crashes: its service stops answering and its announcer (with every process it
    /// started) is SIGKILLed at the same instant, then its address is removed (failure (a)).
    /// The service is muted first: the kill is sent at once, but waiting for a killed process
    /// to be gone takes milliseconds, during which the node must not go on serving.
    pub fn crash(&mut self, i: usize) {
        self.mute(i, true);
        self.kill(i);
        self.remove_vip(i);
    }

    /// Removes the VIP wherever node `i` holds it (lo for Berth, eth0 for keepalived).
    pub fn remove_vip(&self, i: usize) {
        for dev in ["lo", "eth0"] {
            let _ = self.nodes[i].ip(["addr", "del", &format!("{LAB_VIP}/32"), "dev", dev]);
            let _ = self.nodes[i].ip(["addr", "del", &format!("{LAB_VIP}/24"), "dev", dev]);
        }
    }

    /// Whether node `i` holds the VIP on any interface.
    pub fn holds_vip(&self, i: usize) -> bool {
        ["lo", "eth0"].iter().any(|dev| {
            self.nodes[i]
                .addr_list(dev)
                .map(|l| l.iter().any(|a| a.starts_with(&format!("{LAB_VIP}/"))))
                .unwrap_or(false)
        })
    }

    /// Takes node `i`'s link down (`false`) or up, from the switch side.
    pub fn link(&self, i: usize, up: bool) -> Result<()> {
        self.fabric.set_port(&self.ports[i], up)
    }

    /// Cuts node `i` off the other nodes (and the gateway, if `and_gateway`); the client still
    /// reaches it.
    pub fn isolate(&self, i: usize, and_gateway: bool) -> Result<()> {
        let mut others: Vec<&str> = self
            .ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| p.as_str())
            .collect();
        if and_gateway {
            if let Some(g) = &self.gateway_port {
                others.push(g);
            }
        }
        self.fabric.cut(&[self.ports[i].as_str()], &others)
    }

    /// A prober on the client for the VIP's echo (IPv4 or IPv6).
    pub fn prober(&self, v6: bool, interval: Duration) -> Result<UdpProber> {
        let ip = if v6 { LAB_VIP6 } else { LAB_VIP };
        UdpProber::start(
            &self.client,
            SocketAddr::new(ip.parse()?, ECHO_PORT),
            interval,
        )
    }

    /// Waits until the client's probes are answered, and returns the answering node's index.
    pub fn wait_announcer(&self, p: &UdpProber, limit: Duration) -> Result<usize> {
        let r = p
            .wait_reply(epoch(), &[], limit)
            .ok_or_else(|| anyhow!("no node answered the VIP within {limit:?}"))?;
        self.index(&r.tag)
            .ok_or_else(|| anyhow!("reply from unknown tag {}", r.tag))
    }

    /// Waits until the client's probes have been answered by one node without a gap over
    /// 50 ms for `quiet` (at most 30 s), and returns that node's index.
    ///
    /// Why: right after start the address may still move once (nodes become stable for each
    /// other at slightly different times); failures are injected on a settled cluster.
    pub fn wait_settled(&self, p: &UdpProber, quiet: Duration) -> Result<usize> {
        let t0 = Instant::now();
        loop {
            let now = epoch();
            let q = quiet.as_secs_f64();
            let r = p.replies();
            let recent: Vec<&Reply> = r
                .iter()
                .rev()
                .take_while(|x| x.received > now - q - 0.1)
                .collect();
            let steady = !recent.is_empty()
                && recent[0].received > now - 0.05
                && recent.last().is_some_and(|l| l.received < now - q)
                && recent
                    .windows(2)
                    .all(|w| w[0].received - w[1].received < 0.05)
                && recent.iter().all(|x| x.tag == recent[0].tag);
            if steady {
                return self
                    .index(&recent[0].tag)
                    .ok_or_else(|| anyhow!("reply from unknown tag {}", recent[0].tag));
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the VIP did not settle within 30 s\n{}",
                    (0..self.nodes.len())
                        .map(|i| format!("--- n{} ---\n{}", i + 1, self.log(i)))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `berth vip status --json` of node `i`, parsed.
    pub fn berth_status(&self, i: usize, bin: &std::path::Path) -> Result<serde_json::Value> {
        let out = self.nodes[i].exec(
            &bin.to_string_lossy(),
            [
                "vip",
                "status",
                "--json",
                "--metrics-addr",
                &format!("127.0.0.1:{LAB_METRICS_PORT}"),
            ],
        )?;
        Ok(serde_json::from_str(&out)?)
    }
}

impl Drop for VipLab {
    fn drop(&mut self) {
        for d in self.daemons.iter_mut() {
            if let Some(mut d) = d.take() {
                d.kill();
            }
        }
        self.echoes.clear();
    }
}
