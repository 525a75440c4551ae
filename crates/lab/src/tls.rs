//! Throw-away PKI for TLS tests: a CA, a server certificate and a client certificate.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of a test PKI, written into one directory.
///
/// Why: etcd (and later kube-apiserver) tests need mutual TLS. Ledger code under test reads
/// these paths exactly as it would read a real deployment's files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Directory holding all files. Why: mount or copy the whole set at once.
    pub dir: PathBuf,
    /// CA certificate (`ca.pem`). Why: clients and servers trust only this CA.
    pub ca: PathBuf,
    /// Server certificate (`server.pem`), SANs 127.0.0.1, ::1 and localhost, usable for server
    /// and client auth (etcd's own gRPC gateway dials itself with it).
    pub server_cert: PathBuf,
    /// Server private key (`server-key.pem`, PKCS#8).
    pub server_key: PathBuf,
    /// Client certificate (`client.pem`, CN `berth-test-client`). Why: client-cert-auth tests.
    pub client_cert: PathBuf,
    /// Client private key (`client-key.pem`, PKCS#8).
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Generates a fresh CA, server and client certificate (ECDSA P-256) into `dir`.
    ///
    /// Why: every TLS test gets its own CA, so a client of one test can never talk to another's
    /// server by accident, and nothing depends on a pre-made key in the repository.
    pub fn generate(dir: &Path) -> Result<TlsFiles> {
        Self::generate_with_sans(dir, &[])
    }

    /// Like [`TlsFiles::generate`], with `extra_sans` (IP addresses or DNS names) added to the
    /// server certificate.
    ///
    /// Why: a lab's apiserver is reached at its LAN address, at the `kubernetes` Service's
    /// ClusterIP and as `kubernetes.default.svc`; clients verify every one of those names.
    pub fn generate_with_sans(dir: &Path, extra_sans: &[String]) -> Result<TlsFiles> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "berth-testbed CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |cn: &str, sans: Vec<String>, ekus: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(sans)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = ekus;
            p.use_authority_key_identifier_extension = true;
            let cert = p.signed_by(&key, &issuer)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) = leaf(
            "berth-test-server",
            ["127.0.0.1", "::1", "localhost"]
                .iter()
                .map(|s| s.to_string())
                .chain(extra_sans.iter().cloned())
                .collect(),
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        let (client_pem, client_key_pem) = leaf(
            "berth-test-client",
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;

        let files = TlsFiles {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        let write = |p: &Path, s: &str, mode: u32| -> Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(p, s).with_context(|| format!("writing {}", p.display()))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
            Ok(())
        };
        write(&files.ca, &ca_cert.pem(), 0o644)?;
        write(&files.server_cert, &server_pem, 0o644)?;
        write(&files.server_key, &server_key_pem, 0o600)?;
        write(&files.client_cert, &client_pem, 0o644)?;
        write(&files.client_key, &client_key_pem, 0o600)?;
        Ok(files)
    }

    /// Path of `ca.pem`. Why: the name the ledger's TLS config asks for.
    pub fn ca_pem(&self) -> &Path {
        &self.ca
    }

    /// Path of `client.pem`. Why: the name the ledger's TLS config asks for.
    pub fn client_pem(&self) -> &Path {
        &self.client_cert
    }

    /// Path of `client-key.pem`. Why: the name the ledger's TLS config asks for.
    pub fn client_key_pem(&self) -> &Path {
        &self.client_key
    }
}
