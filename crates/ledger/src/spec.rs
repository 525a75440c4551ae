//! Choosing and opening a ledger from a command-line or configuration value.

use crate::embedded::Embedded;
use crate::etcd::{Etcd, DEFAULT_PREFIX};
use crate::{Ledger, LedgerError, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default data directory of the embedded ledger.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/berth";

/// Client certificate files for a TLS etcd (kube-ipam's `etcdCertFile`, `etcdKeyFile`,
/// `etcdTrustedCAFileFile`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// CA that signed the server's certificate (PEM).
    pub ca: Option<PathBuf>,
}

/// Which ledger to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerSpec {
    /// A redb file in this directory.
    Embedded {
        /// The data directory.
        dir: PathBuf,
    },
    /// An etcd v3 cluster.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
        /// TLS files, when the URLs are https.
        tls: Option<TlsFiles>,
        /// Key prefix.
        prefix: String,
    },
}

impl std::str::FromStr for LedgerSpec {
    type Err = LedgerError;

    /// `embedded`, `embedded:DIR` or `etcd:URL[,URL...]`.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "embedded" => Ok(LedgerSpec::Embedded {
                dir: if rest.is_empty() {
                    PathBuf::from(DEFAULT_DATA_DIR)
                } else {
                    PathBuf::from(rest)
                },
            }),
            "etcd" if !rest.is_empty() => Ok(LedgerSpec::Etcd {
                endpoints: rest.split(',').map(str::to_string).collect(),
                tls: None,
                prefix: DEFAULT_PREFIX.to_string(),
            }),
            _ => Err(LedgerError::Config(format!(
                "ledger {s:?} is not understood: use embedded[:DIR] or etcd:URL[,URL...]"
            ))),
        }
    }
}

/// How long a process waits for another process holding the embedded ledger.
pub const EMBEDDED_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Open the ledger a spec names.
pub async fn open(spec: &LedgerSpec) -> Result<Arc<dyn Ledger>> {
    Ok(match spec {
        LedgerSpec::Embedded { dir } => Arc::new(Embedded::open(dir, EMBEDDED_LOCK_WAIT)?),
        LedgerSpec::Etcd {
            endpoints,
            tls,
            prefix,
        } => Arc::new(Etcd::connect(endpoints, tls.as_ref(), prefix).await?),
    })
}
