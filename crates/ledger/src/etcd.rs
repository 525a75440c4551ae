//! The etcd v3 backend: kube-ipam's store, with compare-and-swap transactions on revisions.
//!
//! Keys are `<prefix><kind>/<name>` (prefix `/berth/` by default) and values are JSON, so an operator
//! can read them with `etcdctl get --prefix /berth/`. A record's version is its `mod_revision`.

use crate::etcd_tls::{self, TlsSetup};
use crate::spec::TlsFiles;
use crate::{Entry, Kind, Ledger, LedgerError, Result, Version};
use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
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
    tls: Option<TlsSetup>,
    /// Where compare-and-swap writes queue for the group committer.
    writes: tokio::sync::mpsc::UnboundedSender<Pending>,
}

/// The most compare-and-swap writes one etcd transaction carries (etcd's `--max-txn-ops`
/// default is 128).
const MAX_BATCH: usize = 64;

/// One compare-and-swap write waiting for the group committer.
struct Pending {
    key: String,
    cmp: Compare,
    op: TxnOp,
    /// Whether its compare held (and the write applied), with the transaction's revision.
    reply: tokio::sync::oneshot::Sender<std::result::Result<(bool, i64), CallError>>,
}

/// The group committer: writes that are waiting while a transaction is in flight go to etcd
/// together, as one transaction of nested per-record transactions (each with its own compare).
///
/// Why: on the CNI path every ADD and DEL is one compare-and-swap, and etcd's cost is per
/// transaction (a Raft entry, a WAL sync), not per key: a node's concurrent ADDs share one.
/// Each write still succeeds or fails alone, exactly as it would on its own; two writes to one
/// key never share a transaction (etcd refuses that), the later one waits for the next.
async fn group_commit(client: Client, mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
    let mut carried: std::collections::VecDeque<Pending> = Default::default();
    loop {
        let first = match carried.pop_front() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // A caller that gave up (its deadline passed while it queued) was told "unavailable":
        // its write is never sent after that.
        if first.reply.is_closed() {
            continue;
        }
        let mut keys = std::collections::HashSet::from([first.key.clone()]);
        let mut batch = vec![first];
        // What was carried over first, then what has arrived meanwhile.
        let mut rest = std::mem::take(&mut carried);
        while batch.len() < MAX_BATCH {
            let next = match rest.pop_front() {
                Some(p) => p,
                None => match rx.try_recv() {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if next.reply.is_closed() {
                continue;
            }
            if keys.insert(next.key.clone()) {
                batch.push(next);
            } else {
                carried.push_back(next);
            }
        }
        carried.extend(rest);
        let txn = if batch.len() == 1 {
            Txn::new()
                .when([batch[0].cmp.clone()])
                .and_then([batch[0].op.clone()])
        } else {
            Txn::new().and_then(
                batch
                    .iter()
                    .map(|p| TxnOp::txn(Txn::new().when([p.cmp.clone()]).and_then([p.op.clone()])))
                    .collect::<Vec<_>>(),
            )
        };
        let resp = resend(|| {
            let txn = txn.clone();
            let mut kv = client.kv_client();
            async move { kv.txn(txn).await }
        })
        .await;
        match resp {
            Ok(r) => {
                let rev = r.header().map(|h| h.revision()).unwrap_or_default();
                let outcomes: Vec<bool> = if batch.len() == 1 {
                    vec![r.succeeded()]
                } else {
                    r.op_responses()
                        .into_iter()
                        .map(|o| matches!(o, etcd_client::TxnOpResponse::Txn(t) if t.succeeded()))
                        .collect()
                };
                for (i, p) in batch.into_iter().enumerate() {
                    let _ = p
                        .reply
                        .send(Ok((outcomes.get(i).copied().unwrap_or(false), rev)));
                }
            }
            Err(e) => {
                let msg = match &e {
                    CallError::Etcd(err) => Some(err.to_string()),
                    CallError::Timeout => None,
                };
                let mut batch = batch.into_iter();
                // The first gets the error itself (for the TLS diagnosis), the others its text.
                if let Some(p) = batch.next() {
                    let _ = p.reply.send(Err(e));
                }
                for p in batch {
                    let _ = p.reply.send(Err(match &msg {
                        Some(m) => CallError::Etcd(etcd_client::Error::InvalidArgs(m.clone())),
                        None => CallError::Timeout,
                    }));
                }
            }
        }
    }
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
        let tls = tls.map(etcd_tls::prepare).transpose()?;
        if let Some(t) = &tls {
            opts = opts.with_tls(t.options.clone());
        } else if let Some(e) = endpoints.iter().find(|e| e.starts_with("https://")) {
            return Err(LedgerError::Config(format!(
                "etcd endpoint {e} uses https but no certificates are configured: set etcdCertFile, etcdKeyFile and etcdTrustedCAFileFile"
            )));
        }
        let connected =
            tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&endpoints, Some(opts))).await;
        let client = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(&endpoints, tls.as_ref(), CallError::Etcd(e)).await),
            Err(_) => return Err(unavailable(&endpoints, CallError::Timeout)),
        };
        let (writes, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(group_commit(client.clone(), rx));
        Ok(Etcd {
            client,
            prefix: prefix.to_string(),
            endpoints,
            tls,
            writes,
        })
    }

    /// A clone of the client, and the key prefix of `kind` (e.g. `/berth/blocks/`).
    ///
    /// Why: the agent's routed pod network watches the blocks prefix instead of listing it in a
    /// loop; the watch uses the same endpoints and TLS as the ledger.
    pub fn watch_parts(&self, kind: Kind) -> (Client, String) {
        (
            self.client.clone(),
            format!("{}{}/", self.prefix, kind.as_str()),
        )
    }

    fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}{}/{}", self.prefix, kind.as_str(), name)
    }

    async fn err(&self, e: CallError) -> LedgerError {
        fail(&self.endpoints, self.tls.as_ref(), e).await
    }

    async fn cas(&self, kind: Kind, name: &str, cmp: Compare, op: TxnOp) -> Result<Version> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = Pending {
            key: self.key(kind, name),
            cmp,
            op,
            reply,
        };
        if self.writes.send(pending).is_err() {
            return Err(unavailable(
                &self.endpoints,
                CallError::Etcd(etcd_client::Error::InvalidArgs(
                    "the ledger's write queue has stopped".into(),
                )),
            ));
        }
        // Queueing counts against the deadline too.
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Ok(a) => a,
            Err(_) => return Err(self.err(CallError::Timeout).await),
        };
        let (succeeded, rev) = match answer {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.err(e).await),
            Err(_) => {
                return Err(unavailable(
                    &self.endpoints,
                    CallError::Etcd(etcd_client::Error::InvalidArgs(
                        "the ledger's write queue dropped the write".into(),
                    )),
                ))
            }
        };
        if !succeeded {
            return Err(LedgerError::Conflict {
                kind,
                name: name.to_string(),
            });
        }
        Ok(Version(rev.to_string()))
    }
}

/// The error of a failed request. On a TLS connection a failure the client cannot explain is
/// followed by one diagnostic handshake, so a refused certificate is named (a configuration
/// error, code 7) instead of passing for an unreachable etcd.
async fn fail(endpoints: &[String], tls: Option<&TlsSetup>, e: CallError) -> LedgerError {
    let (Some(tls), CallError::Etcd(err)) = (tls, &e) else {
        return unavailable(endpoints, e);
    };
    let chain: Option<&(dyn std::error::Error + 'static)> = match err {
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    let mut found = etcd_tls::rustls_error(chain).map(|r| (r, endpoints.first().cloned()));
    if found.is_none() {
        for ep in endpoints {
            if let Some(r) = etcd_tls::probe(ep, tls.config.clone()).await {
                found = Some((r, Some(ep.clone())));
                break;
            }
        }
    }
    match found {
        Some((r, ep)) => LedgerError::Config(etcd_tls::explain(
            &r,
            ep.as_deref().unwrap_or_default(),
            &tls.files,
        )),
        None => unavailable(endpoints, e),
    }
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
        .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Err(self.err(e).await),
        };
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
            .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => return Err(self.err(e).await),
            };
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
