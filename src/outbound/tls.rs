//! Client TLS for upstreams (RFC 3207 STARTTLS).
//!
//! `required` upstreams verify the certificate against the public roots
//! (webpki-roots) plus the configured `ca_file`; `opportunistic` ones encrypt
//! without authenticating (RFC 7435): a certificate nobody can check is still
//! better than plaintext against a passive eavesdropper.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Client TLS for one upstream: the public roots (webpki-roots) plus the PEM
/// certificates in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        roots.roots.extend(crate::pem::ca_certificates(path)?.roots);
    }
    let config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Client TLS that accepts any certificate (handshake signatures are still
/// checked): for `tls = "opportunistic"`. Built once, shared.
pub fn unverified_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = crate::tls::provider();
            let verifier = Arc::new(AnyCertificate(provider.clone()));
            Arc::new(
                ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .expect("ring supports TLS 1.2 and 1.3")
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// Trusts every certificate; verifies that the peer holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A failed client handshake in an administrator's words, followed by the
/// library's own text (for searching): what `check-upstreams` prints and
/// what a deferral records.
pub fn explain_handshake_error(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let original = e.to_string();
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return original;
    };
    let words = match tls {
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "the upstream's certificate is not signed by a CA in ca_file nor by a public CA \
                 (or the upstream does not send its intermediate certificates); set ca_file to \
                 the CA that signed it"
                    .into()
            }
            CertificateError::NotValidForName => {
                "the upstream's certificate does not carry the name we connect to; set tls_name \
                 to a name it carries"
                    .into()
            }
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "the upstream's certificate is for {} but we connect to {expected:?}; set \
                 tls_name to a name it carries",
                if presented.is_empty() {
                    "no name".to_owned()
                } else {
                    presented.join(", ")
                }
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the upstream's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the upstream's certificate is not valid yet (check both clocks)".into()
            }
            CertificateError::Revoked => "the upstream's certificate was revoked".into(),
            CertificateError::BadEncoding => "the upstream's certificate cannot be parsed".into(),
            CertificateError::BadSignature => {
                "the upstream's certificate is not signed by the CA it names".into()
            }
            // webpki's CaUsedAsEndEntity reaches us only as an opaque
            // `Other`; its name is the one stable thing to recognise it by.
            CertificateError::Other(other)
                if format!("{other:?}").contains("CaUsedAsEndEntity") =>
            {
                "the upstream presents a CA certificate as its own; it must present a leaf \
                 certificate signed by ca_file"
                    .into()
            }
            _ => "the upstream's certificate was refused".into(),
        },
        Error::AlertReceived(alert) => format!(
            "the upstream ended the handshake (TLS alert {alert:?}): it may not accept TLS 1.2/1.3 \
             or our cipher suites"
        ),
        Error::PeerIncompatible(_) => {
            "the upstream and smarthost share no TLS version or cipher suite (smarthost speaks \
             TLS 1.2 and 1.3)"
                .into()
        }
        Error::InvalidMessage(_) => {
            "the upstream did not speak TLS after its 220 to STARTTLS".into()
        }
        _ => return original,
    };
    format!("{words} ({original})")
}
