//! The speaker process of `berth bgp`, built by this crate for its own
//! integration tests: Cargo builds a crate's binaries for its tests and hands
//! their paths over (`CARGO_BIN_EXE_berth-bgp`), and a separate process is
//! needed anyway (SIGSTOP, SIGHUP, kill/restart, sockets per namespace).
//!
//! It compiles the very module `berth bgp` runs (`crates/berth/src/bgp.rs`),
//! so the tests exercise the shipped process code, not a copy; only argument
//! parsing and the logger set-up below are this file's own (the `berth`
//! binary does both in its `main`, for every role).

#[path = "../../../berth/src/bgp.rs"]
mod bgp;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let path = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(p)) => p,
        _ => {
            eprintln!("usage: berth-bgp --config FILE");
            return std::process::ExitCode::from(2);
        }
    };
    // As `berth`: BERTH_LOG sets the filter, default info, to stderr; no
    // colour codes in the log files the tests read.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match bgp::run(path.into()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth bgp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
