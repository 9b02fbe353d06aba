//! Certificates and private keys read from PEM files; errors name the file, never its contents.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::TlsError;

fn file_error(key: &str, path: &Path, detail: impl Into<String>) -> TlsError {
    TlsError::File {
        key: key.to_owned(),
        path: path.to_owned(),
        detail: detail.into(),
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(key, path, format!("cannot read it: {e}")))
}

/// Every `CERTIFICATE` block of the PEM file at `path` (config key `key`), in order.
///
/// # Errors
/// [`TlsError::File`]: unreadable, malformed PEM, or no certificate in it.
pub fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM CERTIFICATE in it"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of the PEM file at `path`.
///
/// # Errors
/// [`TlsError::File`]: unreadable, or no parsable key; the message never quotes the file.
pub fn key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        let detail = match e {
            pem::Error::NoItemsFound => "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            _ => "not a readable PEM private key",
        };
        file_error(key, path, detail)
    })
}
