//! `berth bgp --config FILE`: runs a speaker from a TOML file and applies
//! only the difference when the file changes (SIGHUP).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, ConfigError};
use crate::speaker::{Speaker, SpeakerError};

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration at start.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Speaker failure at start.
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    /// Signal handler setup.
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// Installs a stderr logger (`RUST_LOG` overrides the default `info`). The
/// runner is a process entry point, so it owns the global subscriber.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Brings the speaker in line with `cfg`: removes peers no longer listed,
/// adds new ones, restarts changed ones, and swaps the route set (which
/// sessions turn into incremental UPDATEs).
pub async fn apply(sp: &mut Speaker, cfg: &Config) -> Result<(), SpeakerError> {
    for a in sp.peer_addresses() {
        if !cfg.peers.iter().any(|p| p.address == a) {
            tracing::info!(peer = %a, "peer removed from configuration");
            sp.remove_peer(a).await;
        }
    }
    let mut first_err = None;
    for p in &cfg.peers {
        if let Err(e) = sp.set_peer(p.clone()).await {
            tracing::error!(peer = %p.address, error = %e, "peer not started");
            first_err.get_or_insert(e);
        }
    }
    sp.replace_routes(cfg.routes.clone());
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Renders peer status as one line per peer.
pub fn status_text(sp: &Speaker) -> String {
    let mut peers = sp.peers();
    peers.sort_by_key(|p| p.address);
    let mut s = String::new();
    for p in peers {
        s.push_str(&format!(
            "peer={} state={} established_transitions={} hold={} prefixes_sent={} prefixes_received={} updates_in={} updates_out={} treat_as_withdraw={} attributes_discarded={} bfd={} last_error={:?}\n",
            p.address.map(|a| a.to_string()).unwrap_or_default(),
            p.state,
            p.established_transitions,
            p.hold_time.map(|h| h.as_secs()).unwrap_or(0),
            p.prefixes_sent,
            p.prefixes_received,
            p.updates_in,
            p.updates_out,
            p.treat_as_withdraw,
            p.attributes_discarded,
            p.bfd_state.map(|b| format!("{b:?}")).unwrap_or_else(|| "-".into()),
            p.last_error.unwrap_or_default(),
        ));
    }
    s
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

fn write_status(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Runs until SIGTERM/SIGINT. SIGHUP re-reads `path`; a bad file is logged
/// and the running configuration kept. SIGUSR1 prints peer status to stderr.
pub async fn run(path: PathBuf) -> Result<(), RunError> {
    let mut cfg = Config::load(&path)?;
    let mut sp = Speaker::new(cfg.global.clone()).await?;
    apply(&mut sp, &cfg).await?;
    release_free_memory();
    tracing::info!(
        peers = cfg.peers.len(),
        routes = cfg.routes.len(),
        "BGP speaker running"
    );
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(RunError::Signal)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match Config::load(&path) {
                    Err(e) => tracing::error!(error = %e, "configuration not reloaded; keeping the running one"),
                    Ok(new) => {
                        if new.global != cfg.global {
                            tracing::warn!("router_id/local_as/listen/graceful_restart changed: restarting every session");
                            sp.shutdown().await;
                            sp = Speaker::new(new.global.clone()).await?;
                        }
                        if let Err(e) = apply(&mut sp, &new).await {
                            tracing::error!(error = %e, "configuration partly applied");
                        }
                        tracing::info!(peers = new.peers.len(), routes = new.routes.len(), "configuration reloaded");
                        cfg = new;
                        release_free_memory();
                    }
                }
            }
            _ = usr1.recv() => eprint!("{}", status_text(&sp)),
            _ = tick.tick() => if let Some(p) = &cfg.status_file { write_status(p, &status_text(&sp)) },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: Cease to every peer");
    sp.shutdown().await;
    Ok(())
}

/// Why the process could not even start its runtime.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Tokio runtime creation failed.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The runner failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Process entry: logging, a small runtime (two workers keep RSS low), run.
/// Shared by `berth bgp` and the `berth-bgp` test binary.
pub fn run_blocking(path: PathBuf) -> Result<(), StartError> {
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    Ok(rt.block_on(run(path))?)
}

/// [`run_blocking`] for a `main` that returns an exit code.
pub fn main_with(path: PathBuf) -> std::process::ExitCode {
    match run_blocking(path) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth bgp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
