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

    /// Generates a CA, a server and a client certificate (RSA 2048) into `dir` with the `openssl`
    /// command line, as operators make them: the CA with `openssl req -x509`, the others with
    /// `openssl x509 -req`. The server certificate gets an extension file (subjectAltName
    /// 127.0.0.1, ::1, localhost; server and client auth). The client certificate gets one only
    /// when `client_v3`; without it `openssl x509 -req` makes an X.509 **v1** certificate, which
    /// etcd (Go) accepts. The CA key stays in `dir/ca-key.pem` for [`Self::openssl_client`].
    ///
    /// Why: TLS tests need certificates that were not made by the library the client uses.
    pub fn generate_openssl(dir: &Path, client_v3: bool) -> Result<TlsFiles> {
        std::fs::create_dir_all(dir)?;
        let files = TlsFiles {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=berth-testbed openssl CA",
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
            ],
        )?;
        files.openssl_leaf(
            "server",
            Some("subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )?;
        files.openssl_client("client", client_v3)?;
        Ok(files)
    }

    /// Another client certificate `dir/NAME.pem` (key `dir/NAME-key.pem`) signed by this
    /// openssl-made CA: v3 with `extendedKeyUsage=clientAuth`, or v1 (no extension file).
    ///
    /// Why: one CA with both kinds of client certificate shows which one the client refuses.
    pub fn openssl_client(&self, name: &str, v3: bool) -> Result<(PathBuf, PathBuf)> {
        self.openssl_leaf(
            name,
            v3.then_some(
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
            ),
        )
    }

    fn openssl_leaf(&self, name: &str, ext: Option<&str>) -> Result<(PathBuf, PathBuf)> {
        let (key, csr, cert) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subj = format!("/CN=berth-test-{name}");
        openssl(
            &self.dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subj, "-keyout", &key, "-out",
                &csr,
            ],
        )?;
        let ext_file = format!("{name}.ext");
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
        ];
        if let Some(ext) = ext {
            std::fs::write(self.dir.join(&ext_file), ext)?;
            args.extend(["-extfile", &ext_file]);
        }
        openssl(&self.dir, &args)?;
        Ok((self.dir.join(cert), self.dir.join(key)))
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

/// Run `openssl ARGS` in `dir`, failing with its output.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    crate::util::run_checked(
        std::process::Command::new(crate::util::tool("openssl"))
            .args(args)
            .current_dir(dir),
    )?;
    Ok(())
}
