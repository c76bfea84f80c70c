//! `[tls]`: the relay's certificates, with a warning for keys others may read.

use std::path::PathBuf;

use toml::Spanned;

use super::paths::{loose_mode, resolve};
use super::raw::RawTls;
use super::source::Source;

#[derive(Debug, Clone)]
pub struct CertificatePaths {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The primary certificate followed by any additional ones (e.g. RSA beside ECDSA).
    pub certificates: Vec<CertificatePaths>,
}

/// The certificate paths, resolved. The files are loaded by `serve` (and
/// `check-config`), whose errors are put back on their line by
/// `Config::error_at_value`.
pub(super) fn validate(
    src: &Source,
    raw: Option<RawTls>,
    warnings: &mut Vec<String>,
) -> Option<TlsConfig> {
    let tls = raw.map(|t| {
        let mut key = |k: Spanned<PathBuf>, name: &str| {
            let line = src.line(k.span().start);
            let path = resolve(src.file, k.into_inner());
            if let Some(mode) = loose_mode(&path) {
                warnings.push(src.warning(
                    line,
                    name,
                    &format!(
                        "{} has mode {mode:04o}, wider than 0640: other local users may read the private key",
                        path.display()
                    ),
                    &format!("chmod 600 {}", path.display()),
                ));
            }
            path
        };
        let mut certificates = vec![CertificatePaths {
            certificate: resolve(src.file, t.certificate),
            private_key: key(t.private_key, "tls.private_key"),
        }];
        for c in t.additional {
            certificates.push(CertificatePaths {
                certificate: resolve(src.file, c.certificate),
                private_key: key(c.private_key, "tls.additional.private_key"),
            });
        }
        TlsConfig { certificates }
    });
    if tls.is_none() {
        warnings.push(
            "no [tls] section: a self-signed certificate is made at start; Office 365 \
             (\"issued by a trusted CA\") and verifying clients will refuse it"
                .into(),
        );
    }
    tls
}
