//! TLS for every link of the crate, on rustls with ring: client configs built from PEM files
//! on each new connection (private CA, client certificate, server-name override), the sink's
//! HTTPS listener, and handshake failures said in words.
//!
//! Layout:
//! - [`client`]: [`ClientTls`], a `rustls::ClientConfig` from `[upstream.tls]`-style settings.
//! - [`explain`]: a rustls error as "which side, which setting".
//! - [`pem`]: certificates and keys read from files, errors naming the file.
//! - [`server`]: the sink's `rustls::ServerConfig` and its handshaking [`server::TlsListener`].
//! - [`x509`]: the few certificate fields the relay reports (subject, expiry).

pub mod client;
pub mod explain;
pub mod pem;
pub mod server;
pub mod x509;

use std::path::PathBuf;

pub use client::ClientTls;

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
