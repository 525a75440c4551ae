//! Scenario tests of the election through the simulator: start-up, failover timing, fencing,
//! graceful handover, rejoin, restarts, the witness, conflicts, configuration errors.

mod sim;

use std::net::IpAddr;

use berth_announce::Timing;
use sim::{Net, Sim, MS};

fn addrs(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| format!("198.18.0.{}", 200 + i).parse().unwrap())
        .collect()
}

fn quiet_net() -> Net {
    Net {
        loss: 0.0,
        max_delay: MS / 2,
        min_delay: MS / 10,
    }
}

#[test]
fn three_nodes_start_and_one_announces_each_address() {
    let mut sim = Sim::new(3, Timing::default(), false, addrs(3), quiet_net(), 1, 0.0);
    sim.run_until(3000 * MS);
    for a in sim.addrs.clone() {
        let who = sim.answering(a);
        if who.len() != 1 {
            for n in &sim.nodes {
                let e = n.election.as_ref().unwrap();
                eprintln!("{}: {:#?}", n.name, e.status(n.local(sim.t)));
                eprintln!("{:?}", n.events);
            }
        }
        assert_eq!(who.len(), 1, "{a}: {who:?}");
    }
    assert!(sim.violations.is_empty());
}
