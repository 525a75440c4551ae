//! SIGTERM and SIGINT end every long-running role cleanly (exit 0, its way out taken): the agent
//! removes its socket; `berth bgp` sends its peers a Cease. (The controller's release of its Lease is tested against a real apiserver
//! in kube_controller.rs.)

mod common;

use berth_testbed::Daemon;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Send `sig` and wait (bounded) for the exit; the status.
fn stop(d: &mut Daemon, sig: libc::c_int) -> std::process::ExitStatus {
    d.signal(sig).expect("signalling");
    let start = Instant::now();
    loop {
        if let Some(st) = d.try_status() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} did not exit within 10 s of signal {sig}:\n{}",
            d.label(),
            d.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_agent_removes_its_socket_on_sigterm_and_sigint() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::embedded();
        let socket = dir.path().join("agent.sock");
        let mut a = Agent::start(&socket, &ledger, "sig-node");
        let st = stop(&mut a.daemon, sig);
        assert!(st.success(), "agent after {name}: {st}\n{}", a.daemon.log());
        assert!(
            !socket.exists(),
            "the agent left its socket behind after {name}"
        );
        let log = a.daemon.log();
        assert!(
            log.contains(name) && log.contains("berth agent stopped"),
            "{log}"
        );
    }
}

#[test]
fn the_bgp_speaker_stops_on_sigterm_and_sigint() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        let conf = dir.path().join("bgp.toml");
        std::fs::write(
            &conf,
            format!(
                "router_id = \"198.18.0.1\"\nlocal_as = 64512\nlisten = false\nstatus_file = \"{}\"\n",
                status.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(BERTH);
        cmd.arg("bgp").arg("--config").arg(&conf);
        let mut d = Daemon::spawn("bgp-signal", cmd, None).unwrap();
        // The status file is written from the loop that also waits for the signals.
        let start = Instant::now();
        while !status.exists() {
            assert!(
                d.is_running() && start.elapsed() < Duration::from_secs(20),
                "berth bgp did not start:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = stop(&mut d, sig);
        assert!(st.success(), "berth bgp after {name}: {st}\n{}", d.log());
        assert!(d.log().contains("shutting down"), "{}", d.log());
    }
}
