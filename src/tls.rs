//! TLS for every link of the crate, on rustls with ring: client configs built from PEM files
//! on each new connection (private CA, client certificate, server-name override), the sink's
//! HTTPS listener, and handshake failures said in words.
//!
//! Layout:
//! - [`client`]: [`ClientTls`], a `rustls::ClientConfig` from `[upstream.tls]`-style settings.
//! - [`error`]: [`TlsError`], an unusable setting named by its config key and file.
//! - [`explain`]: a rustls error as "which side, which setting".
//! - [`pem`]: certificates and keys read from files, errors naming the file.
//! - [`server`]: the sink's `rustls::ServerConfig` and its handshaking [`server::TlsListener`].
//! - [`x509`]: the few certificate fields the relay reports (subject, expiry).

pub mod client;
pub mod error;
pub mod explain;
pub mod pem;
pub mod server;
pub mod x509;

pub use client::ClientTls;
pub use error::TlsError;
