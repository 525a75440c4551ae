//! Daemons: long-running child processes started under `setsid`, tracked by PID, killed on Drop.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::util::show;

type SpawnReq = (Command, mpsc::Sender<std::io::Result<Child>>);

/// How a daemon is started (see [`Daemon::spawn_with`]).
///
/// Why: tests want daemons that die with the test process; `berth lab up` wants daemons that
/// outlive it, inside the lab's cgroups.
#[derive(Debug, Clone)]
pub struct SpawnOpts {
    /// Kill the daemon when this process dies (`PR_SET_PDEATHSIG`); default true.
    pub parent_death: bool,
    /// `cgroup.procs` files the daemon writes itself into before it execs (one per hierarchy).
    pub cgroup_procs: Vec<PathBuf>,
}

impl Default for SpawnOpts {
    fn default() -> Self {
        SpawnOpts {
            parent_death: true,
            cgroup_procs: Vec::new(),
        }
    }
}

/// All daemons are spawned from one thread that lives as long as the process.
///
/// Why: each daemon gets `PR_SET_PDEATHSIG(SIGKILL)`, which Linux fires when the *thread* that
/// forked it exits. Spawning from a test thread would kill the daemon when that test thread ends
/// (fatal for a cluster shared through a `static`); spawning from this never-ending thread makes
/// the signal fire exactly when the whole test process dies, even by SIGKILL (a nextest timeout),
/// so no daemon outlives its test process.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnReq>> {
    static TX: OnceLock<Mutex<mpsc::Sender<SpawnReq>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnReq>();
        std::thread::Builder::new()
            .name("berth-testbed-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop never ends while the process runs.
                loop {
                    std::thread::park();
                }
            })
            .expect("starting the berth-testbed spawner thread");
        Mutex::new(tx)
    })
}

/// A daemon process started by the harness.
///
/// Why: the safety rules require every daemon to run in its own session (`setsid`), to be known
/// by the PID the harness recorded, and to be killed when the test ends, also on panic. Only that
/// recorded PID (and the process group it leads, which `setsid` made it the leader of) is ever
/// signalled. Output goes to a log file (never a pipe that could fill and block the daemon).
pub struct Daemon {
    label: String,
    pid: u32,
    child: Option<Child>,
    status: Option<ExitStatus>,
    log: PathBuf,
    _log_dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("label", &self.label)
            .field("pid", &self.pid)
            .field("log", &self.log)
            .finish()
    }
}

impl Daemon {
    /// Spawns `cmd` as a daemon under `setsid`, with stdin closed and stdout+stderr appended to
    /// `log` (or to a file in a private temp dir when `log` is `None`).
    ///
    /// Why: one place that applies the daemon rules (own session, parent-death signal, recorded
    /// PID, log file) to any program: etcd, BIRD, gobgpd, FRR, the Berth agent.
    pub fn spawn(label: &str, cmd: Command, log: Option<&Path>) -> Result<Daemon> {
        Self::spawn_with(label, cmd, log, &SpawnOpts::default())
    }

    /// [`Daemon::spawn`] with options: whether the daemon dies with this process, and the
    /// cgroups it starts in.
    ///
    /// Why: `berth lab up` leaves its world running after it exits (no parent-death signal),
    /// and every process of a lab starts inside the lab's cgroups, so `berth lab down` finds
    /// whatever it forked (containerd's shims, the pods) even after a crash.
    pub fn spawn_with(
        label: &str,
        mut cmd: Command,
        log: Option<&Path>,
        opts: &SpawnOpts,
    ) -> Result<Daemon> {
        let (log, log_dir) = match log {
            Some(p) => (p.to_path_buf(), None),
            None => {
                let d = tempfile::Builder::new()
                    .prefix(&format!("{}-", crate::unique_name(label)))
                    .tempdir()?;
                (d.path().join("daemon.log"), Some(d))
            }
        };
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let parent_death = opts.parent_death;
        let procs: Vec<std::ffi::CString> = opts
            .cgroup_procs
            .iter()
            .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()))
            .collect::<std::result::Result<_, _>>()
            .context("a cgroup path with a NUL byte")?;
        // SAFETY: only async-signal-safe calls (setsid, prctl, getpid, open, write, close) run
        // between fork and exec; the paths were allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if parent_death
                    && libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    ) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if !procs.is_empty() {
                    // "0" names the writing process itself in cgroup v1 and v2.
                    for p in &procs {
                        let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                        if r < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                Ok(())
            });
        }
        let line = show(&cmd);
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((cmd, tx))
            .map_err(|_| anyhow!("berth-testbed spawner thread is gone"))?;
        let child = rx
            .recv()
            .map_err(|_| anyhow!("berth-testbed spawner thread is gone"))?
            .with_context(|| format!("spawning daemon `{line}`"))?;
        Ok(Daemon {
            label: label.to_string(),
            pid: child.id(),
            child: Some(child),
            status: None,
            log,
            _log_dir: log_dir,
        })
    }

    /// The recorded PID. Why: tests that SIGSTOP a peer or look at `/proc` need it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The label given at spawn. Why: names the daemon in errors and logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Path of the daemon's combined stdout/stderr log. Why: attach it to a failing assertion.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The daemon's log so far (lossy UTF-8, empty if unreadable). Why: explain a failure.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log. Why: error messages quote the tail, not megabytes.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Returns true while the process has not exited (reaps it if it has).
    ///
    /// Why: a test must detect a daemon that died on start (e.g. port already taken).
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Tells, without reaping, whether the recorded child has exited (is a zombie or reaped).
    fn has_exited(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        // SAFETY: waitid with WNOWAIT only inspects our own child; siginfo is plain data.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            r == 0 && info.si_pid() != 0
        }
    }

    /// Kills the daemon's process group and reaps the leader; returns its exit status.
    ///
    /// The group is signalled only while the leader is not reaped: until then its PID, and so
    /// the group id `setsid` gave it, cannot belong to anyone else.
    fn reap(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        // SAFETY: plain syscalls on a PID that is still ours (not reaped).
        unsafe {
            libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL);
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
        let child = self
            .child
            .as_mut()
            .expect("daemon child present until reaped");
        let s = child.wait().expect("waiting for a daemon");
        self.status = Some(s);
        s
    }

    /// The exit status if the process has exited (then reaped, with any processes left in its
    /// group killed); `None` while it runs.
    ///
    /// Why: lets callers report how a daemon died. Daemons must run in the foreground.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.has_exited() {
            Some(self.reap())
        } else {
            None
        }
    }

    /// Sends `sig` to the recorded PID, unless the process has already exited.
    ///
    /// Why: SIGSTOP/SIGCONT make a peer silent without closing its sockets (hold-timer tests).
    pub fn signal(&mut self, sig: libc::c_int) -> Result<()> {
        if self.status.is_some() {
            bail!(
                "daemon {} (pid {}) has already exited",
                self.label,
                self.pid
            );
        }
        // SAFETY: the child is not reaped, so the PID cannot have been reused.
        if unsafe { libc::kill(self.pid as libc::pid_t, sig) } < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill({}, {sig})", self.pid));
        }
        Ok(())
    }

    /// Freezes the daemon with SIGSTOP. Why: simulate a silent peer (no FIN, no RST).
    pub fn pause(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Resumes a paused daemon with SIGCONT. Why: end a silence test.
    pub fn resume(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGKILLs the daemon (and the process group it leads) and reaps it.
    ///
    /// Why: simulates a crash; also the cleanup path. Idempotent.
    pub fn kill(&mut self) -> ExitStatus {
        self.reap()
    }

    /// SIGTERMs the daemon and waits up to `grace` for it to exit, then SIGKILLs it; either way
    /// the process group is killed and the daemon reaped.
    ///
    /// Why: a clean stop (etcd takes >1 s) must be waited for before reusing its ports or data.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if self.status.is_none() && !self.has_exited() {
            let _ = self.signal(libc::SIGTERM);
            // A stopped process does not act on SIGTERM until continued.
            let _ = self.signal(libc::SIGCONT);
            let start = Instant::now();
            while start.elapsed() < grace && !self.has_exited() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.reap()
    }
}

impl Daemon {
    /// Lets the daemon go: it is no longer killed on Drop, and this handle forgets it.
    /// Returns its PID.
    ///
    /// Why: `berth lab up` exits while its world keeps running; `berth lab down` stops the
    /// daemons later from the PIDs recorded in the lab's state file.
    pub fn release(mut self) -> u32 {
        self.child = None;
        self.pid
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}
