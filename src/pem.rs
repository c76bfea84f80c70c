//! CA certificates from a PEM file (`ca_file`), checked the way rustls will
//! use them. Below `config`, which checks a `ca_file` at load time so that a
//! config `check-config` passes is one `serve` starts with, and below the
//! outbound TLS that trusts them.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The certificates in `path` as trust anchors; an unreadable file, one
/// without a certificate, or an unusable certificate is an error.
pub fn ca_certificates(path: &Path) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}
