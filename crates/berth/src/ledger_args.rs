//! The `--ledger` option and its etcd TLS companions, shared by every subcommand.

use anyhow::Context;
use berth_ledger::{LedgerSpec, TlsFiles};
use clap::Args;
use std::path::PathBuf;

/// Which ledger to use.
#[derive(Args, Debug, Clone)]
pub struct LedgerArgs {
    /// `embedded[:DIR]` (default, DIR defaults to /var/lib/berth), `etcd:URL[,URL...]` or
    /// `kubernetes` (Berth's CRDs on the cluster of --kubeconfig, or in-cluster).
    #[arg(long, default_value = "embedded")]
    pub ledger: String,
    /// kubeconfig for the Kubernetes ledger and the pod watch (default: in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// etcd client certificate (PEM).
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// etcd client key (PEM).
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// CA that signed etcd's server certificate (PEM).
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Key prefix in etcd.
    #[arg(long, default_value = berth_ledger::etcd::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
}

impl LedgerArgs {
    /// Whether the ledger is Berth's CRDs on a Kubernetes cluster.
    pub fn is_kubernetes(&self) -> bool {
        self.ledger == "kubernetes"
    }

    /// Open the ledger these options name.
    pub async fn open(
        &self,
    ) -> Result<std::sync::Arc<dyn berth_ledger::Ledger>, berth_ledger::LedgerError> {
        if self.is_kubernetes() {
            let l = berth_k8s::KubeLedger::connect(self.kubeconfig.as_deref()).await?;
            return Ok(std::sync::Arc::new(l));
        }
        let spec = self
            .spec()
            .map_err(|e| berth_ledger::LedgerError::Config(format!("{e:#}")))?;
        berth_ledger::open(&spec).await
    }

    /// The ledger these options name.
    pub fn spec(&self) -> anyhow::Result<LedgerSpec> {
        let mut spec: LedgerSpec = self
            .ledger
            .parse()
            .with_context(|| format!("--ledger {:?}", self.ledger))?;
        if let LedgerSpec::Etcd { tls, prefix, .. } = &mut spec {
            *prefix = self.etcd_prefix.clone();
            if self.etcd_cert.is_some() || self.etcd_key.is_some() || self.etcd_ca.is_some() {
                *tls = Some(TlsFiles {
                    cert: self.etcd_cert.clone(),
                    key: self.etcd_key.clone(),
                    ca: self.etcd_ca.clone(),
                });
            }
        }
        Ok(spec)
    }
}
