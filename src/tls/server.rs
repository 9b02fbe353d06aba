//! The sink's HTTPS: a `rustls::ServerConfig` from PEM files (optionally requiring client
//! certificates of a CA) and [`TlsListener`], which handshakes accepted connections off the
//! accept loop.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::client::provider;
use super::error::TlsError;
use super::pem;
use crate::http_serve::Listener;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; at the cap no more connections are accepted until one ends.
pub const MAX_HANDSHAKES: usize = 256;

/// Files of a TLS server (`edge-relay sink --tls-cert --tls-key [--client-ca]`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM); never logged.
    pub key_file: PathBuf,
    /// Set: clients must present a certificate signed by a CA in this PEM file.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTls {
    /// Reads the files and builds the server config (HTTP/1.1 ALPN).
    ///
    /// # Errors
    /// A file is unreadable or unparsable, or the key is not the certificate's.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("server TLS: {e}")))?;
        let builder = match &self.client_ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in pem::certs("--client-ca", path)? {
                    roots.add(cert).map_err(|e| TlsError::File {
                        key: "--client-ca".to_owned(),
                        path: path.clone(),
                        detail: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::Config(format!("--client-ca: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = pem::certs("--tls-cert", &self.cert_file)?;
        let key = pem::key("--tls-key", &self.key_file)?;
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            if let rustls::Error::InconsistentKeys(_) = e {
                TlsError::KeyMismatch {
                    key_key: "--tls-key".to_owned(),
                    key: self.key_file.clone(),
                    cert_key: "--tls-cert".to_owned(),
                    cert: self.cert_file.clone(),
                }
            } else {
                TlsError::Config(format!("server TLS: {e}"))
            }
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

type Handshake<Io> = io::Result<(TlsStream<Io>, SocketAddr)>;

/// A [`Listener`] whose connections come out TLS-handshaken. Handshakes run in their own
/// tasks (at most [`MAX_HANDSHAKES`], each bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or
/// refused client never holds up the others; a failed one is logged and skipped.
pub struct TlsListener<L: Listener> {
    inner: L,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Handshake<L::Io>>,
}

impl<L: Listener> TlsListener<L> {
    /// Serves TLS with `config` on connections from `inner`.
    pub fn new(inner: L, config: Arc<ServerConfig>) -> Self {
        Self {
            inner,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }
}

impl<L: Listener> Listener for TlsListener<L> {
    type Io = TlsStream<L::Io>;

    async fn accept(&mut self) -> io::Result<(Self::Io, SocketAddr)> {
        // Cancel-safe: the inner accept and `join_next` lose nothing when dropped.
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                accepted = self.inner.accept(), if room => {
                    let (stream, peer) = accepted?;
                    let acceptor = self.acceptor.clone();
                    self.handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => Ok((tls, peer)),
                            Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("{peer}: {e}"))),
                            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut,
                                format!("{peer}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))),
                        }
                    });
                }
                Some(done) = self.handshakes.join_next() => match done {
                    Ok(Ok(pair)) => return Ok(pair),
                    Ok(Err(e)) => log::warn!(error:% = e; "TLS handshake failed"),
                    Err(e) => log::warn!(error:% = e; "TLS handshake task failed"),
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
