//! Prometheus metrics of an announcer (the `prometheus-client` crate).
//!
//! Why: failovers, peer health and fencing must be visible to the operator's monitoring,
//! the same way for the standalone VIP and (later) the agent, which serves this registry.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::election::{Event, Reason, Status};

/// Label: one address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddrLabel {
    /// The address.
    pub address: String,
}

/// Labels: an address and why it was withdrawn.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WithdrawLabel {
    /// The address.
    pub address: String,
    /// lost_majority, link_down, moved, leaving, removed.
    pub reason: String,
}

/// Label: one peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's name.
    pub peer: String,
}

/// Label: one announcing interface (an agent runs one announcer per interface).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IfaceLabel {
    /// The interface's name.
    pub interface: String,
}

/// Every metric of one announcer, registered under `berth_announce_`.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// 1 while this node announces the address.
    pub announcing: Family<AddrLabel, Gauge>,
    /// Times this node started announcing the address (takeovers and first announcements).
    pub acquired: Family<AddrLabel, Counter>,
    /// Times this node stopped announcing the address, by reason.
    pub withdrawn: Family<WithdrawLabel, Counter>,
    /// 1 while the peer is heard (within T_takeover).
    pub peer_up: Family<PeerLabel, Gauge>,
    /// Seconds since the peer's last heartbeat (at the last scrape).
    pub peer_last_heard: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    /// Heartbeats received, by peer.
    pub heartbeats_received: Family<PeerLabel, Counter>,
    /// Heartbeats sent.
    pub heartbeats_sent: Counter,
    /// Heartbeats also sent through the witness (two members with a witness).
    pub heartbeats_relayed: Counter,
    /// Hellos sent to the whole link (peers' addresses learnt rather than configured).
    pub hellos_sent: Counter,
    /// Peers' addresses learnt (or changed) from their hellos.
    pub peers_learnt: Counter,
    /// Heartbeats that could not be sent (link down…).
    pub heartbeat_send_errors: Counter,
    /// Datagrams ignored: not a heartbeat, another cluster, an unconfigured sender.
    pub heartbeats_ignored: Counter,
    /// 1 while this node hears a majority, per announcing interface.
    pub quorum: Family<IfaceLabel, Gauge>,
    /// 1 while the announcing interface is up.
    pub link_up: Family<IfaceLabel, Gauge>,
    /// 1 while a host that is not a member answers for the address.
    pub conflict: Family<AddrLabel, Gauge>,
    /// Conflicts found by probes.
    pub conflicts: Family<AddrLabel, Counter>,
    /// Answers and announcements withheld by the lease gate.
    pub withheld: Counter,
    /// Gratuitous ARPs / unsolicited NAs sent.
    pub garps_sent: Counter,
    /// Kernel operations that failed (and were retried).
    pub kernel_errors: Counter,
    /// Milliseconds left on this node's lease, per announced address (at the last scrape).
    pub lease_ms: Family<AddrLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("berth_announce")),
            announcing: Family::default(),
            acquired: Family::default(),
            withdrawn: Family::default(),
            peer_up: Family::default(),
            peer_last_heard: Family::default(),
            heartbeats_received: Family::default(),
            heartbeats_sent: Counter::default(),
            heartbeats_relayed: Counter::default(),
            hellos_sent: Counter::default(),
            peers_learnt: Counter::default(),
            heartbeat_send_errors: Counter::default(),
            heartbeats_ignored: Counter::default(),
            quorum: Family::default(),
            link_up: Family::default(),
            conflict: Family::default(),
            conflicts: Family::default(),
            withheld: Counter::default(),
            garps_sent: Counter::default(),
            kernel_errors: Counter::default(),
            lease_ms: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "announcing",
                "1 while this node announces the address",
                m.announcing.clone(),
            );
            r.register(
                "acquired",
                "Times this node started announcing the address",
                m.acquired.clone(),
            );
            r.register(
                "withdrawn",
                "Times this node stopped announcing the address, by reason",
                m.withdrawn.clone(),
            );
            r.register(
                "peer_up",
                "1 while the peer is heard within T_takeover",
                m.peer_up.clone(),
            );
            r.register(
                "peer_last_heard_seconds",
                "Seconds since the peer's last heartbeat",
                m.peer_last_heard.clone(),
            );
            r.register(
                "heartbeats_received",
                "Heartbeats received, by peer",
                m.heartbeats_received.clone(),
            );
            r.register(
                "heartbeats_sent",
                "Heartbeats sent",
                m.heartbeats_sent.clone(),
            );
            r.register(
                "heartbeats_relayed",
                "Heartbeats also sent through the witness, for a router there to forward",
                m.heartbeats_relayed.clone(),
            );
            r.register(
                "hellos_sent",
                "Hellos sent to every host on the link, from which peers learn this node's heartbeat address",
                m.hellos_sent.clone(),
            );
            r.register(
                "peers_learnt",
                "Peers' heartbeat addresses learnt or changed from their hellos",
                m.peers_learnt.clone(),
            );
            r.register(
                "heartbeat_send_errors",
                "Heartbeats that could not be sent",
                m.heartbeat_send_errors.clone(),
            );
            r.register(
                "heartbeats_ignored",
                "Datagrams ignored (not a heartbeat, unknown sender)",
                m.heartbeats_ignored.clone(),
            );
            r.register(
                "quorum",
                "1 while this node hears a majority",
                m.quorum.clone(),
            );
            r.register(
                "link_up",
                "1 while the announcing interface is up",
                m.link_up.clone(),
            );
            r.register(
                "conflict",
                "1 while a host that is not a member answers for the address",
                m.conflict.clone(),
            );
            r.register(
                "conflicts",
                "Conflicts found by probes",
                m.conflicts.clone(),
            );
            r.register(
                "withheld",
                "ARP/NDP answers and announcements withheld by the lease gate",
                m.withheld.clone(),
            );
            r.register(
                "garps_sent",
                "Gratuitous ARPs and unsolicited NAs sent",
                m.garps_sent.clone(),
            );
            r.register(
                "kernel_errors",
                "Kernel operations that failed and were retried",
                m.kernel_errors.clone(),
            );
            r.register(
                "lease_milliseconds",
                "Milliseconds left on this node's lease",
                m.lease_ms.clone(),
            );
        }
        m
    }

    fn addr(a: std::net::IpAddr) -> AddrLabel {
        AddrLabel {
            address: a.to_string(),
        }
    }

    /// Counts an election event.
    pub fn record(&self, ev: &Event) {
        match ev {
            Event::Acquired { addr } => {
                self.acquired.get_or_create(&Self::addr(*addr)).inc();
                self.announcing.get_or_create(&Self::addr(*addr)).set(1);
            }
            Event::Withdrawn { addr, reason } => {
                let reason = match reason {
                    Reason::LostMajority => "lost_majority",
                    Reason::LinkDown => "link_down",
                    Reason::Moved => "moved",
                    Reason::Leaving => "leaving",
                    Reason::Removed => "removed",
                };
                self.withdrawn
                    .get_or_create(&WithdrawLabel {
                        address: addr.to_string(),
                        reason: reason.into(),
                    })
                    .inc();
                self.announcing.get_or_create(&Self::addr(*addr)).set(0);
            }
            Event::Conflict { addr, .. } => {
                self.conflicts.get_or_create(&Self::addr(*addr)).inc();
                self.conflict.get_or_create(&Self::addr(*addr)).set(1);
            }
            Event::ConflictCleared { addr } => {
                self.conflict.get_or_create(&Self::addr(*addr)).set(0);
            }
            Event::Ignored { .. } => {
                self.heartbeats_ignored.inc();
            }
            Event::PeerUp { .. } | Event::PeerDown { .. } | Event::PeerRestarted { .. } => {}
        }
    }

    /// The label of `interface`.
    pub fn iface(interface: &str) -> IfaceLabel {
        IfaceLabel {
            interface: interface.to_string(),
        }
    }

    /// Counts a heartbeat from `peer`.
    pub fn received(&self, peer: &str) {
        self.heartbeats_received
            .get_or_create(&PeerLabel { peer: peer.into() })
            .inc();
    }

    /// Updates the gauges that come from the status (called at each scrape).
    pub fn observe(&self, interface: &str, s: &Status) {
        self.quorum
            .get_or_create(&Self::iface(interface))
            .set(i64::from(s.quorum));
        self.link_up
            .get_or_create(&Self::iface(interface))
            .set(i64::from(s.link_up));
        for p in &s.peers {
            let l = PeerLabel {
                peer: p.name.clone(),
            };
            self.peer_up.get_or_create(&l).set(i64::from(p.alive));
            if let Some(ms) = p.last_heard_ms {
                self.peer_last_heard
                    .get_or_create(&l)
                    .set(ms as f64 / 1000.0);
            }
        }
        for a in &s.addresses {
            let l = Self::addr(a.address);
            self.announcing
                .get_or_create(&l)
                .set(i64::from(a.announcing));
            self.lease_ms
                .get_or_create(&l)
                .set(i64::try_from(a.lease_ms).unwrap_or(i64::MAX));
        }
    }

    /// The registry in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_show_up_in_the_text_format() {
        let m = Metrics::new();
        let a: std::net::IpAddr = "198.18.0.200".parse().unwrap();
        m.record(&Event::Acquired { addr: a });
        m.record(&Event::Withdrawn {
            addr: a,
            reason: Reason::LinkDown,
        });
        m.received("n2");
        m.withheld.inc();
        let t = m.encode();
        assert!(
            t.contains(r#"berth_announce_acquired_total{address="198.18.0.200"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(
                r#"berth_announce_withdrawn_total{address="198.18.0.200",reason="link_down"} 1"#
            ),
            "{t}"
        );
        assert!(
            t.contains(r#"berth_announce_announcing{address="198.18.0.200"} 0"#),
            "{t}"
        );
        assert!(
            t.contains(r#"berth_announce_heartbeats_received_total{peer="n2"} 1"#),
            "{t}"
        );
        assert!(t.contains("berth_announce_withheld_total 1"), "{t}");
    }
}
