//! The etcd v3 backend: kube-ipam's store, with compare-and-swap transactions on revisions.
//!
//! Keys are `<prefix><kind>/<name>` (prefix `/berth/` by default) and values are JSON, so an operator
//! can read them with `etcdctl get --prefix /berth/`. A record's version is its `mod_revision`.

use crate::spec::TlsFiles;
use crate::{Entry, Kind, Ledger, LedgerError, Result, Version};
use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp,
};
use std::time::Duration;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/berth/";
/// Records fetched per page when listing, so a large ledger never exceeds gRPC message limits.
const PAGE: i64 = 500;
/// How many times a request that never reached a server is re-sent (the client then picks
/// another endpoint), so one dead member of a cluster does not fail a share of all requests.
const UNSENT_RETRIES: usize = 6;
/// The longest one etcd request may take, waiting for a connection included: an etcd that
/// accepts TCP but never answers (stopped, overloaded, half-partitioned) makes the request
/// fail as "unavailable" (CNI code 11) after this, instead of hanging its caller.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a TCP connect to one endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether an error proves the request never reached etcd (refused or failed connection), so
/// re-sending it cannot apply a write twice.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(st) => {
            st.code() == tonic::Code::Unavailable && st.message().contains("connect")
        }
        _ => false,
    }
}

/// Why one etcd request failed.
enum CallError {
    /// The client's error.
    Etcd(etcd_client::Error),
    /// No answer within [`REQUEST_TIMEOUT`].
    Timeout,
}

/// Run `op`, re-sending it while it fails without having reached a server; the whole, re-sends
/// included, is bounded by [`REQUEST_TIMEOUT`].
async fn resend<T, F, Fut>(mut op: F) -> std::result::Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let attempts = async {
        let mut tries = 0;
        loop {
            match op().await {
                Err(e) if never_sent(&e) && tries < UNSENT_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20 * tries as u64)).await;
                }
                other => return other,
            }
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, attempts).await {
        Ok(r) => r.map_err(CallError::Etcd),
        Err(_) => Err(CallError::Timeout),
    }
}

/// The etcd ledger.
pub struct Etcd {
    client: Client,
    prefix: String,
    endpoints: Vec<String>,
}

impl Etcd {
    /// Connect to the given endpoints (comma-separated URLs are split), with optional TLS.
    pub async fn connect(
        endpoints: &[String],
        tls: Option<&TlsFiles>,
        prefix: &str,
    ) -> Result<Self> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(LedgerError::Config(
                "no etcd endpoint given: set etcdURL (or --ledger etcd:URL[,URL...])".into(),
            ));
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = tls {
            opts = opts.with_tls(tls_options(tls)?);
        } else if let Some(e) = endpoints.iter().find(|e| e.starts_with("https://")) {
            return Err(LedgerError::Config(format!(
                "etcd endpoint {e} uses https but no certificates are configured: set etcdCertFile, etcdKeyFile and etcdTrustedCAFileFile"
            )));
        }
        let client =
            match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&endpoints, Some(opts)))
                .await
            {
                Ok(r) => r.map_err(|e| unavailable(&endpoints, CallError::Etcd(e)))?,
                Err(_) => return Err(unavailable(&endpoints, CallError::Timeout)),
            };
        Ok(Etcd {
            client,
            prefix: prefix.to_string(),
            endpoints,
        })
    }

    fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}{}/{}", self.prefix, kind.as_str(), name)
    }

    fn err(&self, e: CallError) -> LedgerError {
        unavailable(&self.endpoints, e)
    }

    async fn cas(&self, kind: Kind, name: &str, cmp: Compare, op: TxnOp) -> Result<Version> {
        let txn = Txn::new().when([cmp]).and_then([op]);
        let resp = resend(|| {
            let txn = txn.clone();
            let mut kv = self.client.kv_client();
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| self.err(e))?;
        if !resp.succeeded() {
            return Err(LedgerError::Conflict {
                kind,
                name: name.to_string(),
            });
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(Version(rev.to_string()))
    }
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        LedgerError::Config(format!(
            "{what} {}: {e}; check the path and its permissions",
            path.display()
        ))
    })
}

fn tls_options(tls: &TlsFiles) -> Result<TlsOptions> {
    let mut o = TlsOptions::new();
    if let Some(ca) = &tls.ca {
        o = o.ca_certificate(Certificate::from_pem(read_file(
            ca,
            "etcdTrustedCAFileFile",
        )?));
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            o = o.identity(Identity::from_pem(
                read_file(cert, "etcdCertFile")?,
                read_file(key, "etcdKeyFile")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(LedgerError::Config(
                "etcdCertFile and etcdKeyFile must be given together".into(),
            ))
        }
    }
    Ok(o)
}

fn unavailable(endpoints: &[String], e: CallError) -> LedgerError {
    LedgerError::Unavailable {
        backend: format!("etcd:{}", endpoints.join(",")),
        reason: match e {
            CallError::Etcd(e) => e.to_string(),
            CallError::Timeout => format!(
                "no answer within {} s (a stopped, overloaded or partitioned etcd accepts connections but does not answer)",
                REQUEST_TIMEOUT.as_secs()
            ),
        },
    }
}

#[async_trait]
impl Ledger for Etcd {
    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Entry>> {
        let key = self.key(kind, name);
        let resp = resend(|| {
            let mut kv = self.client.kv_client();
            let key = key.clone();
            async move { kv.get(key, None).await }
        })
        .await
        .map_err(|e| self.err(e))?;
        Ok(resp.kvs().first().map(|kv| Entry {
            name: name.to_string(),
            value: kv.value().to_vec(),
            version: Version(kv.mod_revision().to_string()),
        }))
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Entry>> {
        let base = format!("{}{}/", self.prefix, kind.as_str());
        let mut end = base.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1; // '/' + 1 = '0': the first key past the prefix
        }
        let mut from = base.clone().into_bytes();
        let mut out = vec![];
        let mut revision = 0;
        loop {
            let resp = resend(|| {
                let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                if revision != 0 {
                    opts = opts.with_revision(revision);
                }
                let mut kv = self.client.kv_client();
                let from = from.clone();
                async move { kv.get(from, Some(opts)).await }
            })
            .await
            .map_err(|e| self.err(e))?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            for kv in resp.kvs() {
                let name = String::from_utf8_lossy(&kv.key()[base.len()..]).into_owned();
                out.push(Entry {
                    name,
                    value: kv.value().to_vec(),
                    version: Version(kv.mod_revision().to_string()),
                });
            }
            match (resp.more(), resp.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn create(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<Version> {
        let key = self.key(kind, name);
        match self
            .cas(
                kind,
                name,
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                TxnOp::put(key, value, None),
            )
            .await
        {
            Err(LedgerError::Conflict { kind, name }) => Err(LedgerError::Exists { kind, name }),
            other => other,
        }
    }

    async fn update(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        expected: &Version,
    ) -> Result<Version> {
        let key = self.key(kind, name);
        let rev = expected.revision::<i64>(kind, name)?;
        self.cas(
            kind,
            name,
            Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
            TxnOp::put(key, value, None),
        )
        .await
    }

    async fn delete(&self, kind: Kind, name: &str, expected: &Version) -> Result<()> {
        let key = self.key(kind, name);
        let rev = expected.revision::<i64>(kind, name)?;
        self.cas(
            kind,
            name,
            Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
            TxnOp::delete(key, None),
        )
        .await
        .map(|_| ())
    }

    fn describe(&self) -> String {
        format!("etcd:{}", self.endpoints.join(","))
    }

    fn backend(&self) -> crate::Backend {
        crate::Backend::Etcd
    }
}
