//! The lease gate: the last check before a frame for an address leaves this node.
//!
//! Why: the election decides *whether* to announce at each poll, but a poll can be late (a
//! CPU stall, SIGSTOP, a paused VM). The responder answers ARP/NDP from this process, and
//! every answer and every gratuitous ARP / unsolicited NA passes [`LeaseGate::allows`],
//! which compares the lease end the election last computed with the clock *now*. A process
//! that resumes after its lease ended drops the requests that queued up meanwhile instead of
//! answering them on a stale right.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::time::{Clock, Stamp};

/// Per-address lease ends, read by the responder on every frame.
pub struct LeaseGate {
    clock: Arc<dyn Clock>,
    ends: Mutex<HashMap<IpAddr, Stamp>>,
    withheld: AtomicU64,
    counter: Option<prometheus_client::metrics::counter::Counter>,
}

impl std::fmt::Debug for LeaseGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGate")
            .field(
                "ends",
                &*self.ends.lock().unwrap_or_else(|e| e.into_inner()),
            )
            .finish()
    }
}

impl LeaseGate {
    /// A closed gate on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> LeaseGate {
        LeaseGate {
            clock,
            ends: Mutex::new(HashMap::new()),
            withheld: AtomicU64::new(0),
            counter: None,
        }
    }

    /// A closed gate that also counts refusals in `counter` (the `withheld` metric).
    pub fn with_counter(
        clock: Arc<dyn Clock>,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> LeaseGate {
        LeaseGate {
            counter: Some(counter),
            ..LeaseGate::new(clock)
        }
    }

    /// Replaces every lease end: addresses not listed are closed at once.
    pub fn set(&self, ends: impl IntoIterator<Item = (IpAddr, Stamp)>) {
        let mut m = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        m.clear();
        m.extend(ends);
    }

    /// Closes everything (shutdown, link loss).
    pub fn close_all(&self) {
        self.ends.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether a frame for `ip` may go out now. Refusals are counted.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let end = self
            .ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .copied();
        let ok = end.is_some_and(|end| self.clock.now() < end);
        if !ok {
            self.withheld.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = &self.counter {
                c.inc();
            }
        }
        ok
    }

    /// Frames withheld so far. Why: a metric that shows fencing at answer time at work.
    pub fn withheld(&self) -> u64 {
        self.withheld.load(Ordering::Relaxed)
    }
}

impl berth_netlink::Gate for LeaseGate {
    fn allows(&self, ip: IpAddr) -> bool {
        LeaseGate::allows(self, ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::TokioClock;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn closes_at_the_lease_end_without_anyone_telling_it() {
        let clock = Arc::new(TokioClock::new());
        let g = LeaseGate::new(clock.clone());
        let a: IpAddr = "198.18.0.200".parse().unwrap();
        let b: IpAddr = "198.18.0.201".parse().unwrap();
        assert!(!g.allows(a), "closed until set");
        g.set([(a, clock.now() + Duration::from_millis(300))]);
        assert!(g.allows(a) && !g.allows(b));
        // A "stall": nobody updates the gate; time passes.
        tokio::time::sleep(Duration::from_millis(299)).await;
        assert!(g.allows(a));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!g.allows(a), "open exactly until the lease end, not after");
        assert_eq!(g.withheld(), 3);
        g.set([(a, Stamp::MAX)]);
        assert!(g.allows(a));
        g.close_all();
        assert!(!g.allows(a));
    }
}
