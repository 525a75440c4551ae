//! `berth bgp --config FILE`: the process around the `berth-bgp` library.
//!
//! The library is a speaker an agent embeds; what only a stand-alone process
//! needs lives here: its runtime, the signals (SIGHUP reloads, SIGTERM/SIGINT
//! withdraw and Cease, SIGUSR1 prints the status), the status file, and
//! returning the TOML parse's memory to the OS.
//!
//! This file is also compiled into `berth-bgp`'s own test binary
//! (`crates/bgp/src/bin/berth-bgp.rs`, by `#[path]`), so the interop tests run
//! exactly this code without building the whole `berth` binary. It therefore
//! uses only what both crates depend on (std, tokio, tracing, libc,
//! berth-bgp).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_bgp::{Config, ConfigError, ShutdownMode, Snapshot, Speaker, SpeakerError};
use tokio::signal::unix::{signal, SignalKind};

/// Why `berth bgp` stopped with an error.
#[derive(Debug)]
pub enum BgpError {
    /// Bad configuration at start.
    Config(ConfigError),
    /// The speaker could not start.
    Speaker(SpeakerError),
    /// The runtime or a signal handler could not be set up.
    Setup(&'static str, std::io::Error),
}

impl fmt::Display for BgpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BgpError::Config(e) => e.fmt(f),
            BgpError::Speaker(e) => e.fmt(f),
            BgpError::Setup(what, e) => write!(f, "cannot set up {what}: {e}"),
        }
    }
}

impl std::error::Error for BgpError {}

impl From<ConfigError> for BgpError {
    fn from(e: ConfigError) -> Self {
        BgpError::Config(e)
    }
}

impl From<SpeakerError> for BgpError {
    fn from(e: SpeakerError) -> Self {
        BgpError::Speaker(e)
    }
}

/// Runs the speaker from `config` until SIGTERM/SIGINT, on a small runtime
/// (two workers keep the RSS low).
pub fn run(config: PathBuf) -> Result<(), BgpError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BgpError::Setup("the async runtime", e))?;
    rt.block_on(serve(config))
}

/// One line per peer: state, counters, limits, last error.
pub fn status_text(s: &Snapshot) -> String {
    let mut out = String::new();
    for p in &s.peers {
        let limit = match &p.limit_hit {
            Some(l) => format!("{}:{}>{}", l.family, l.count, l.limit),
            None => "-".into(),
        };
        out.push_str(&format!(
            "peer={} state={} established_transitions={} hold={} prefixes_sent={} prefixes_received={} \
             received_ipv4={} received_ipv6={} updates_in={} updates_out={} treat_as_withdraw={} \
             attributes_discarded={} limit={} held_down={} bfd={} last_error={:?}\n",
            p.address.map(|a| a.to_string()).unwrap_or_default(),
            p.state,
            p.established_transitions,
            p.hold_time.map(|h| h.as_secs()).unwrap_or(0),
            p.prefixes_sent,
            p.prefixes_received,
            p.prefixes_received_ipv4,
            p.prefixes_received_ipv6,
            p.updates_in,
            p.updates_out,
            p.treat_as_withdraw,
            p.attributes_discarded,
            limit,
            p.held_down,
            p.bfd_state
                .map(|b| format!("{b:?}"))
                .unwrap_or_else(|| "-".into()),
            p.last_error.clone().unwrap_or_default(),
        ));
    }
    out
}

/// Hands memory freed after parsing a large configuration back to the OS
/// (glibc keeps it otherwise): the TOML tree of 10,000 routes is several MiB
/// that the running speaker never needs again.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Replaces the status file in one step (write a temporary, rename).
fn write_status(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

async fn apply(sp: &Speaker, cfg: &Config) -> Result<(), SpeakerError> {
    sp.reconcile(&cfg.peers, cfg.routes.clone()).await?;
    Ok(())
}

async fn serve(path: PathBuf) -> Result<(), BgpError> {
    let mut cfg = Config::load(&path)?;
    let mut sp = Speaker::new(cfg.global.clone()).await?;
    apply(&sp, &cfg).await?;
    release_free_memory();
    tracing::info!(
        peers = cfg.peers.len(),
        routes = cfg.routes.len(),
        "BGP speaker running"
    );
    let sig = |k: SignalKind| signal(k).map_err(|e| BgpError::Setup("a signal handler", e));
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut usr1 = sig(SignalKind::user_defined1())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hup.recv() => match Config::load(&path) {
                Err(e) => tracing::error!(error = %e, "configuration not reloaded; keeping the running one"),
                Ok(new) => {
                    if new.global != cfg.global {
                        tracing::warn!("router_id/local_as/listen/graceful_restart changed: restarting every session");
                        sp.shutdown(ShutdownMode::Cease).await;
                        sp = Speaker::new(new.global.clone()).await?;
                    }
                    if let Err(e) = apply(&sp, &new).await {
                        tracing::error!(error = %e, "configuration partly applied");
                    }
                    tracing::info!(peers = new.peers.len(), routes = new.routes.len(), "configuration reloaded");
                    cfg = new;
                    release_free_memory();
                }
            },
            _ = usr1.recv() => eprint!("{}", status_text(&sp.snapshot())),
            _ = tick.tick() => if let Some(p) = &cfg.status_file {
                write_status(p, &status_text(&sp.snapshot()));
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: withdrawing routes, then Cease to every peer");
    sp.shutdown(ShutdownMode::Withdraw).await;
    Ok(())
}
