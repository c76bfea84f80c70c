//! Server-side TLS: certificates, protocol versions and key exchange chosen
//! for the clients a smart host really meets.
//!
//! Exchange 2013/2016 on Windows Server 2012 R2 shares no TLS 1.2 cipher suite
//! with rustls unless the certificate is ECDSA (it lacks the RSA-GCM ECDHE suites
//! rustls offers), and hardened Windows hosts disable X25519, so: ECDSA is
//! preferred, P-256 and P-384 key exchange stay enabled (ring's defaults), and an
//! RSA certificate may sit beside the ECDSA one, chosen per ClientHello.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureAlgorithm};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertificatePaths, TlsConfig};
use crate::spool::TlsInfo;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {problem}")]
    File {
        path: String,
        /// The config key that named the file: `certificate` or `private_key`.
        key: &'static str,
        problem: String,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider used everywhere (ring: builds with gcc alone).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server TLS configuration: the configured certificates, or a
/// self-signed ECDSA P-256 one for `hostname` when `[tls]` is absent.
pub fn server_config(
    tls: Option<&TlsConfig>,
    hostname: &str,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = provider();
    let keys = match tls {
        Some(t) => t
            .certificates
            .iter()
            .map(|c| load_certified_key(c, &provider))
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![self_signed(hostname, &provider)?],
    };
    let resolver = CertificateChooser::new(keys);
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

fn load_certified_key(
    paths: &CertificatePaths,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let file_err = |path: &Path, problem: String| TlsSetupError::File {
        path: path.display().to_string(),
        key: if path == paths.certificate {
            "certificate"
        } else {
            "private_key"
        },
        problem,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.certificate)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_err(&paths.certificate, format!("cannot read certificates: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(
            &paths.certificate,
            "no PEM certificate in the file (expected the full chain, leaf first)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&paths.private_key).map_err(|e| {
        file_err(
            &paths.private_key,
            format!("cannot read the private key: {e}"),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        file_err(
            &paths.private_key,
            format!("key does not fit the certificate: {e}"),
        )
    })?;
    Ok(Arc::new(certified))
}

fn self_signed(
    hostname: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let err = |e: rcgen::Error| TlsSetupError::SelfSigned(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut names = vec![hostname.to_owned()];
    if hostname != "localhost" {
        names.push("localhost".into());
    }
    let cert = rcgen::CertificateParams::new(names)
        .map_err(err)?
        .self_signed(&key)
        .map_err(err)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| TlsSetupError::SelfSigned(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::from_der(
        vec![cert.der().clone()],
        key_der,
        provider,
    )?))
}

/// Picks, per ClientHello, the first certificate whose key can sign with a
/// scheme the client offers; ECDSA certificates are tried first.
#[derive(Debug)]
struct CertificateChooser {
    keys: Vec<Arc<CertifiedKey>>,
}

impl CertificateChooser {
    fn new(mut keys: Vec<Arc<CertifiedKey>>) -> Self {
        keys.sort_by_key(|k| k.key.algorithm() != SignatureAlgorithm::ECDSA);
        CertificateChooser { keys }
    }
}

impl ResolvesServerCert for CertificateChooser {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI is required: the name offered does not narrow the choice.
        let offered = hello.signature_schemes();
        self.keys
            .iter()
            .find(|k| k.key.choose_scheme(offered).is_some())
            .or_else(|| self.keys.first())
            .cloned()
    }
}

/// The facts of a finished handshake, for Received headers and the envelope.
pub fn describe(conn: &rustls::CommonState) -> TlsInfo {
    TlsInfo {
        version: conn
            .protocol_version()
            .map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
        cipher: conn
            .negotiated_cipher_suite()
            .map_or_else(|| "unknown".into(), |s| format!("{:?}", s.suite())),
    }
}
