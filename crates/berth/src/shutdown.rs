//! SIGTERM and SIGINT for the long-running roles, installed before any slow start-up step.
//!
//! Why: Kubernetes stops a pod with SIGTERM (a rollout, a drain) and an operator with Ctrl-C;
//! both must run the role's way out (the controller gives up its Lease, the agent removes its
//! socket). Installed first thing, so a signal during start-up (a ledger that is not reachable
//! yet) also ends the process cleanly instead of by the default action.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals that stop a role.
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Install the handlers. Must run inside the Tokio runtime.
    pub fn install() -> std::io::Result<Shutdown> {
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Wait for SIGTERM or SIGINT; returns its name, for the log.
    pub async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
