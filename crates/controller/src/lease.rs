//! Leader election with a `coordination.k8s.io/v1` Lease, so two controller replicas never both
//! act. Correctness never depends on it: every release is a compare-and-swap, so an old leader that
//! has not yet noticed it lost the lease can only repeat a release that already happened.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use std::time::Duration;

/// Who competes for which Lease.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (holderIdentity).
    pub identity: String,
    /// How long a holder keeps the lease without renewing.
    pub duration: Duration,
}

/// Takes and renews the Lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    /// An elector for `cfg` on the cluster of `client`.
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    /// Take the Lease if it is free or expired, renew it if ours. True when we hold it now.
    /// Every write carries the resourceVersion read, so two replicas cannot both win.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let secs = i32::try_from(self.cfg.duration.as_secs()).unwrap_or(i32::MAX);
        let current = self.api.get_opt(&self.cfg.name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str());
        // A Lease its holder released (no holder) is free at once.
        let released = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = released
            || match (&spec.renew_time, spec.lease_duration_seconds) {
                (Some(t), Some(d)) => {
                    let until = t.0 + std::time::Duration::from_secs(u64::try_from(d).unwrap_or(0));
                    until < k8s_openapi::jiff::Timestamp::now()
                }
                _ => true,
            };
        if !ours && !expired {
            return Ok(false);
        }
        let mut next = spec.clone();
        if !ours {
            next.holder_identity = Some(self.cfg.identity.clone());
            next.acquire_time = Some(now());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            tracing::info!(identity = %self.cfg.identity, previous = ?spec.holder_identity, "taking over the controller lease");
        }
        next.renew_time = Some(now());
        next.lease_duration_seconds = Some(secs);
        lease.spec = Some(next);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up if this replica holds it: clear the holder, so a standby takes over at
    /// its next try instead of waiting out the Lease duration. Returns whether it was released.
    ///
    /// Why: a rollout or a node drain stops the leader with SIGTERM; without a release every
    /// such stop leaves the cluster without GC and fencing for a whole Lease duration. The write
    /// carries the resourceVersion read, so a Lease another replica took meanwhile is left alone.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
