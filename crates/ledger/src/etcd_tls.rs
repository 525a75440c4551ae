//! TLS to etcd that says what failed: which file, which check, and what to do.
//!
//! etcd-client (through tonic and rustls) reports every TLS problem as "transport error" or a
//! closed connection. So the files are checked up front exactly as rustls will use them (PEM
//! blocks, the client certificate's X.509 version, the key belonging to the certificate), and a
//! request that fails on a TLS connection is followed by one diagnostic handshake whose rustls
//! error (or the alert etcd sent) is turned into a sentence naming the file to fix.
//!
//! rustls verifies certificates with webpki, which parses X.509 **v3** only (and v1 only as a
//! trust anchor, i.e. a CA). A v1 client certificate — what `openssl x509 -req` makes without an
//! extension file, and what etcdctl (Go) accepts — is refused by rustls when it loads it; Berth
//! says so and how to re-issue it, instead of failing later without a reason.

use crate::spec::TlsFiles;
use crate::LedgerError;
use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the diagnostic handshake may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a TLS etcd connection is made of: the options for etcd-client, and the same
/// configuration as rustls will see it, for the diagnostic handshake.
pub(crate) struct TlsSetup {
    pub options: TlsOptions,
    pub config: Arc<ClientConfig>,
    pub files: TlsFiles,
}

fn read(path: &Path, field: &str) -> Result<Vec<u8>, LedgerError> {
    std::fs::read(path).map_err(|e| {
        LedgerError::Config(format!(
            "{field} {}: {e}; check the path and its permissions",
            path.display()
        ))
    })
}

fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// The X.509 version (1, 2 or 3) of a DER certificate; `None` if it is not a DER certificate.
/// Read by hand because v1 is exactly what the TLS library refuses to parse.
pub fn x509_version(der: &[u8]) -> Option<u8> {
    /// (tag, header length, content length) of the DER element at the start of `b`.
    fn element(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        Some((tag, 2 + n, len))
    }
    let (tag, h, _) = element(der)?;
    if tag != 0x30 {
        return None;
    }
    let tbs = der.get(h..)?;
    let (tag, h, _) = element(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let inner = tbs.get(h..)?;
    // TBSCertificate ::= SEQUENCE { version [0] EXPLICIT Version DEFAULT v1, serialNumber, ... }
    if *inner.first()? != 0xa0 {
        return Some(1);
    }
    let (_, h, _) = element(inner)?;
    let int = inner.get(h..)?;
    let (tag, h, len) = element(int)?;
    if tag != 0x02 || len != 1 {
        return None;
    }
    Some(int.get(h)?.saturating_add(1))
}

/// The message for a v1 client certificate; the README quotes it.
fn v1_message(cert: &Path) -> String {
    format!(
        "client certificate {} (etcdCertFile) is X.509 v1; Berth's TLS library (rustls) accepts only v3 certificates, although etcdctl accepts v1: re-issue it as v3 with an extension file, e.g. `openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out client.pem -days 365 -extfile client.ext` where client.ext holds `extendedKeyUsage=clientAuth`",
        cert.display()
    )
}

/// Check the files as rustls will use them and build the TLS options; every refusal names the
/// file, the check and the fix.
pub(crate) fn prepare(tls: &TlsFiles) -> Result<TlsSetup, LedgerError> {
    let mut options = TlsOptions::new();
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &tls.ca {
        let pem = read(ca, "etcdTrustedCAFileFile")?;
        let found = certs(&pem);
        if found.is_empty() {
            return Err(LedgerError::Config(format!(
                "etcdTrustedCAFileFile {} holds no PEM certificate (-----BEGIN CERTIFICATE-----): point it at the CA certificate that signed etcd's server certificate",
                ca.display()
            )));
        }
        let (added, _) = roots.add_parsable_certificates(found);
        if added == 0 {
            return Err(LedgerError::Config(format!(
                "etcdTrustedCAFileFile {}: none of its certificates can be used as a CA by rustls: give the PEM certificate of the CA that signed etcd's server certificate",
                ca.display()
            )));
        }
        options = options.ca_certificate(Certificate::from_pem(pem));
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| LedgerError::Config(format!("TLS set-up: {e}")))?
            .with_root_certificates(roots);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let cert_pem = read(cert, "etcdCertFile")?;
            let key_pem = read(key, "etcdKeyFile")?;
            let chain = certs(&cert_pem);
            let Some(first) = chain.first() else {
                return Err(LedgerError::Config(format!(
                    "etcdCertFile {} holds no PEM certificate (-----BEGIN CERTIFICATE-----): point it at the client certificate",
                    cert.display()
                )));
            };
            if x509_version(first) == Some(1) {
                return Err(LedgerError::Config(v1_message(cert)));
            }
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                LedgerError::Config(format!(
                    "etcdKeyFile {} holds no PEM private key ({e}): give the client certificate's key (PKCS#8, PKCS#1 RSA or SEC1 EC PEM)",
                    key.display()
                ))
            })?;
            // The very call tonic makes with these files: its refusals, named.
            let config = builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| {
                    let fix = match &e {
                        rustls::Error::InconsistentKeys(_) => {
                            "the key does not belong to the certificate: give the certificate's own key"
                        }
                        _ => "check that etcdCertFile is a v3 PEM certificate and etcdKeyFile its key",
                    };
                    LedgerError::Config(format!(
                        "client certificate {} (etcdCertFile) with key {} (etcdKeyFile) is refused by rustls: {e}: {fix}",
                        cert.display(),
                        key.display()
                    ))
                })?;
            options = options.identity(Identity::from_pem(cert_pem, key_pem));
            config
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(LedgerError::Config(
                "etcdCertFile and etcdKeyFile must be given together".into(),
            ))
        }
    };
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(TlsSetup {
        options,
        config: Arc::new(config),
        files: tls.clone(),
    })
}

/// The rustls error in an error's source chain, if any (also inside an `io::Error`, where
/// rustls and hyper put it).
pub(crate) fn rustls_error(
    mut cur: Option<&(dyn std::error::Error + 'static)>,
) -> Option<rustls::Error> {
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r.clone());
            }
        }
        cur = err.source();
    }
    None
}

/// Host and port of an `https://host:port` endpoint.
fn host_port(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let rest = rest.split('/').next()?;
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (h, p) = v6.split_once("]:")?;
            (h.to_string(), p)
        }
        None => {
            let (h, p) = rest.rsplit_once(':')?;
            (h.to_string(), p)
        }
    };
    Some((host, port.parse().ok()?))
}

/// One handshake with `endpoint` as rustls makes it, and what went wrong, if anything did: the
/// handshake's own error, or the alert etcd sends after it (TLS 1.3 servers refuse a client
/// certificate only once the client has finished).
pub(crate) async fn probe(endpoint: &str, config: Arc<ClientConfig>) -> Option<rustls::Error> {
    let (host, port) = host_port(endpoint)?;
    let name = ServerName::try_from(host.clone()).ok()?;
    let tcp = tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .ok()?
    .ok()?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let as_rustls = |e: std::io::Error| rustls_error(Some(&e));
    let mut stream = match tokio::time::timeout(PROBE_TIMEOUT, connector.connect(name, tcp)).await {
        Err(_) => return None,
        Ok(Err(e)) => return as_rustls(e),
        Ok(Ok(s)) => s,
    };
    // Speak first, as a gRPC client would, so the server has read our handshake's end.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .ok()?;
    let _ = stream.flush().await;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(PROBE_TIMEOUT, stream.read(&mut buf)).await {
        Ok(Err(e)) => as_rustls(e),
        _ => None,
    }
}

/// A sentence for a rustls error met talking to `endpoint`: which certificate, which check,
/// what to do.
pub(crate) fn explain(e: &rustls::Error, endpoint: &str, files: &TlsFiles) -> String {
    let ca = files
        .ca
        .as_ref()
        .map(|p| format!("etcdTrustedCAFileFile {}", p.display()))
        .unwrap_or_else(|| "no etcdTrustedCAFileFile (none is configured)".into());
    let client = files
        .cert
        .as_ref()
        .map(|p| format!("etcdCertFile {}", p.display()));
    let host = host_port(endpoint).map(|(h, _)| h).unwrap_or_default();
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "etcd's server certificate at {endpoint} is not signed by the CA in {ca} (rustls: {e}): point etcdTrustedCAFileFile at the CA that signed etcd's --cert-file"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "etcd's server certificate at {endpoint} does not list {host:?} in its subjectAltName (rustls: {e}): use an etcdURL with a name or address the certificate lists, or re-issue it with subjectAltName for {host}"
            ),
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => format!(
                "etcd's server certificate at {endpoint} is not valid now (rustls: {e}): renew it, or check this node's clock"
            ),
            other if format!("{other:?}").contains("UnsupportedCertVersion") => format!(
                "etcd's server certificate at {endpoint} is X.509 v1, which rustls does not accept (only v3): re-issue it as v3 with a subjectAltName extension (openssl x509 -req ... -extfile server.ext)"
            ),
            _ => format!(
                "etcd's server certificate at {endpoint} is refused (rustls: {e}): check it against {ca}"
            ),
        },
        rustls::Error::AlertReceived(alert) => match &client {
            Some(client) => format!(
                "etcd at {endpoint} refused the client certificate {client} (TLS alert {alert:?}): it must be signed by a CA in etcd's --trusted-ca-file, be valid now and allow client authentication (extendedKeyUsage clientAuth)"
            ),
            None => format!(
                "etcd at {endpoint} refused a connection without a client certificate (TLS alert {alert:?}): it requires a client certificate (etcd --client-cert-auth): set etcdCertFile and etcdKeyFile"
            ),
        },
        other => format!("TLS with etcd at {endpoint} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x509_versions_are_read_from_der() {
        // SEQUENCE { SEQUENCE { [0] { INTEGER 2 }, INTEGER 1 } }: a v3 TBSCertificate start.
        let v3 = [
            0x30, 0x0a, 0x30, 0x08, 0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01,
        ];
        assert_eq!(x509_version(&v3), Some(3));
        // Without the [0] version: v1.
        let v1 = [0x30, 0x05, 0x30, 0x03, 0x02, 0x01, 0x01];
        assert_eq!(x509_version(&v1), Some(1));
        // Long-form lengths.
        let long = [0x30, 0x81, 0x05, 0x30, 0x03, 0x02, 0x01, 0x01];
        assert_eq!(x509_version(&long), Some(1));
        assert_eq!(x509_version(b"not der"), None);
        assert_eq!(x509_version(&[]), None);
    }

    #[test]
    fn endpoints_split_into_host_and_port() {
        assert_eq!(
            host_port("https://127.0.0.1:2379"),
            Some(("127.0.0.1".into(), 2379))
        );
        assert_eq!(host_port("https://[::1]:2379"), Some(("::1".into(), 2379)));
        assert_eq!(
            host_port("https://etcd.example:2379/"),
            Some(("etcd.example".into(), 2379))
        );
        assert_eq!(host_port("https://etcd.example"), None);
    }
}
