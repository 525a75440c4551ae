//! Prometheus metrics of the controller (the `prometheus-client` crate), served by
//! `berth controller --metrics ADDR` at `/metrics`.
//!
//! Why: an operator's monitoring must see whether this replica leads, whether Services wait for
//! addresses (and how many), how full each service pool is, and whether ledger writes fail, without
//! reading logs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

/// Label: one pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// The pool's name.
    pub pool: String,
}

/// Label: how a ledger write ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, `conflict` (another writer got there first: re-read and retried) or `error`.
    pub result: String,
}

/// Every metric of the controller, registered under `berth_controller_`.
pub struct ControllerMetrics {
    registry: Mutex<Registry>,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
    /// Addresses held for Services, per pool (at the end of the last pass).
    pub service_addresses: Family<PoolLabel, Gauge>,
    /// LoadBalancer Services waiting for an address (no pool, exhausted, taken, bad annotation).
    pub services_waiting: Gauge,
    /// Passes of the Service controller (one per batch of changed Services).
    pub service_passes: Counter,
    /// Seconds per pass, from planning to the last status and Event.
    pub service_pass_seconds: Histogram,
    /// Ledger writes for Service addresses, by result.
    pub service_writes: Family<ResultLabel, Counter>,
}

impl std::fmt::Debug for ControllerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerMetrics").finish_non_exhaustive()
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        let m = ControllerMetrics {
            registry: Mutex::new(Registry::with_prefix("berth_controller")),
            leader: Gauge::default(),
            service_addresses: Family::default(),
            services_waiting: Gauge::default(),
            service_passes: Counter::default(),
            service_pass_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            service_writes: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "leader",
                "1 while this replica holds the Lease",
                m.leader.clone(),
            );
            r.register(
                "service_addresses",
                "Addresses held for Services, per pool",
                m.service_addresses.clone(),
            );
            r.register(
                "services_waiting",
                "LoadBalancer Services waiting for an address",
                m.services_waiting.clone(),
            );
            r.register(
                "service_passes",
                "Passes of the Service controller",
                m.service_passes.clone(),
            );
            r.register(
                "service_pass_seconds",
                "Seconds per Service controller pass",
                m.service_pass_seconds.clone(),
            );
            r.register(
                "service_writes",
                "Ledger writes for Service addresses, by result",
                m.service_writes.clone(),
            );
        }
        m
    }
}

impl ControllerMetrics {
    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }

    /// Count one write's result.
    pub fn write(&self, result: &str) {
        self.service_writes
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_the_prefix() {
        let m = ControllerMetrics::default();
        m.leader.set(1);
        m.write("ok");
        m.service_addresses
            .get_or_create(&PoolLabel {
                pool: "public".into(),
            })
            .set(3);
        let text = m.encode();
        assert!(text.contains("berth_controller_leader 1"), "{text}");
        assert!(
            text.contains("berth_controller_service_writes_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_controller_service_addresses{pool=\"public\"} 3"),
            "{text}"
        );
    }
}
