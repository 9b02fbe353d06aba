//! [`TlsError`]: a TLS setting that cannot be used.

use std::path::PathBuf;

/// A TLS setting that cannot be used; each names its config key and file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable certificate or key.
    #[error("{key} {}: {detail}", path.display())]
    File {
        /// Config key, e.g. `upstream.tls.ca_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its contents).
        detail: String,
    },
    /// The private key is not the one of the certificate.
    #[error("{key_key} {} does not match the certificate in {cert_key} {}", key.display(), cert.display())]
    KeyMismatch {
        /// Config key of the key file.
        key_key: String,
        /// The key file.
        key: PathBuf,
        /// Config key of the certificate file.
        cert_key: String,
        /// The certificate file.
        cert: PathBuf,
    },
    /// Anything else: an unusable `server_name`, no trusted root at all, ...
    #[error("{0}")]
    Config(String),
}
