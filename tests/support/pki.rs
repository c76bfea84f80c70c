//! Test certificates made with rcgen: a CA, a server certificate it signed,
//! and the rustls configurations a client and a server build from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The relay's name in tests: in its certificate and its config.
pub const HOSTNAME: &str = "relay.test";

/// A CA and a server certificate it signed (SAN localhost, 127.0.0.1 and
/// `HOSTNAME`).
pub struct TestCa {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "smarthost test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (cert_pem, key_pem) = Self::sign(&issuer, &leaf_key);
        TestCa {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            cert_pem,
            key_pem,
            issuer,
        }
    }

    /// Certificate for `key`, signed by this CA.
    fn sign(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        key: &rcgen::KeyPair,
    ) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".into(),
            "127.0.0.1".into(),
            HOSTNAME.into(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, HOSTNAME);
        let leaf = params.signed_by(key, issuer).unwrap();
        (leaf.pem(), key.serialize_pem())
    }

    /// The server certificate and the CA's: the full chain a server sends.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.ca_pem)
    }

    /// Writes the chain and the key (mode 0600, as an administrator keeps
    /// it) to `dir/NAME.crt` and `dir/NAME.key`; returns both paths.
    pub fn write_certificate(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, self.chain_pem()).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        (cert, key)
    }

    /// An RSA certificate (key made by openssl: ring cannot generate RSA keys).
    pub fn rsa_certificate(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let key_path = dir.join("rsa.key");
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key_path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is required (apt-get install openssl)");
        assert!(status.success());
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
        let (cert, _) = Self::sign(&self.issuer, &key);
        let cert_path = dir.join("rsa.crt");
        std::fs::write(&cert_path, format!("{cert}{}", self.ca_pem)).unwrap();
        (cert_path, key_path)
    }

    /// A client that trusts this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(smarthost::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A server presenting this CA's certificate with its chain.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        server_config(&self.chain_pem(), &self.key_pem)
    }
}

/// A TLS server config from PEM strings (certificate chain, key).
pub fn server_config(cert_pem: &str, key_pem: &str) -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(smarthost::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

/// A TLS server config with a fresh self-signed certificate for localhost.
pub fn self_signed() -> Arc<ServerConfig> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    server_config(&cert.pem(), &key.serialize_pem())
}
