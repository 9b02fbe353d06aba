//! [`ClientTls`]: a `rustls::ClientConfig` built from `[upstream.tls]`-style settings, read from
//! the files again for every new connection.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, InconsistentKeys, RootCertStore, SignatureScheme,
};

use super::error::TlsError;
use super::pem;
use super::x509::{self, CertSummary};
use crate::config::TlsConfig;

/// No client certificate loaded yet (the value of [`ClientTls::client_not_after`]'s cell).
const UNKNOWN: i64 = i64::MIN;

/// One client side's TLS settings and what its last connection saw. Clones share the record.
#[derive(Debug, Clone)]
pub struct ClientTls {
    section: &'static str,
    config: TlsConfig,
    client_not_after: Arc<AtomicI64>,
    server_cert: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

/// The crypto the crate builds: ring (no aws-lc-rs: it needs cmake and breaks the ARM builds).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClientTls {
    /// Settings of the config section `section` (`upstream.tls`, `ingest.mqtt.tls`), which
    /// errors name; a section starting with `--` is a flag prefix (`--mqtt`: `--mqtt-ca`...).
    pub fn new(section: &'static str, config: TlsConfig) -> Self {
        Self {
            section,
            config,
            client_not_after: Arc::new(AtomicI64::new(UNKNOWN)),
            server_cert: Arc::default(),
        }
    }

    /// The config section these settings come from.
    pub fn section(&self) -> &'static str {
        self.section
    }

    /// The settings.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Reads the files and builds a client config: roots from `ca_file` and/or the public
    /// roots, the client certificate and key if set, the `server_name` override. Called for
    /// each new connection, so rotated files take effect without a restart.
    ///
    /// # Errors
    /// A file is unreadable or unparsable ([`TlsError::File`]), the key is not the
    /// certificate's ([`TlsError::KeyMismatch`]), or `server_name` is not a name.
    pub fn load(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let verifier = self.verifier(&provider)?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("{}: {e}", self.section)))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.config.cert_file, &self.config.key_file) {
            (Some(cert_path), Some(key_path)) => {
                let (cert_key, key_key) = (self.key("cert_file"), self.key("key_file"));
                let chain = pem::certs(&cert_key, cert_path)?;
                if let Some(s) = x509::summary(&chain[0]) {
                    self.client_not_after.store(s.not_after, Ordering::Relaxed);
                }
                let key = pem::key(&key_key, key_path)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                            TlsError::KeyMismatch {
                                key_key: key_key.clone(),
                                key: key_path.clone(),
                                cert_key,
                                cert: cert_path.clone(),
                            }
                        }
                        other => TlsError::File {
                            key: key_key,
                            path: key_path.clone(),
                            detail: format!("unusable with its certificate: {other}"),
                        },
                    })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(format!(
                    "{0}.cert_file and {0}.key_file go together",
                    self.section
                )));
            }
        };
        Ok(Arc::new(config))
    }

    /// `notAfter` (Unix seconds) of the client certificate the last [`ClientTls::load`] read;
    /// `None` before any, or without a client certificate.
    pub fn client_not_after(&self) -> Option<i64> {
        Some(self.client_not_after.load(Ordering::Relaxed)).filter(|t| *t != UNKNOWN)
    }

    /// Subject and expiry of the certificate the last server presented (verified or not).
    pub fn server_cert(&self) -> Option<CertSummary> {
        let seen = self.server_cert.lock().unwrap_or_else(|p| p.into_inner());
        seen.as_ref().and_then(x509::summary)
    }

    /// Subject and expiry of the client certificate in `cert_file`, read now.
    ///
    /// # Errors
    /// The file cannot be read or parsed.
    pub fn client_cert(&self) -> Result<Option<CertSummary>, TlsError> {
        let Some(path) = &self.config.cert_file else {
            return Ok(None);
        };
        let chain = pem::certs(&self.key("cert_file"), path)?;
        Ok(x509::summary(&chain[0]))
    }

    /// `section.name`, e.g. `upstream.tls.ca_file`, or the flag (`--mqtt-ca`).
    pub(super) fn key(&self, name: &str) -> String {
        if self.section.starts_with("--") {
            let flag = name.trim_end_matches("_file").replace('_', "-");
            format!("{}-{flag}", self.section)
        } else {
            format!("{}.{name}", self.section)
        }
    }

    fn verifier(&self, provider: &Arc<CryptoProvider>) -> Result<Arc<Recording>, TlsError> {
        let mut roots = RootCertStore::empty();
        if self.config.trusts_public_roots() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if let Some(path) = &self.config.ca_file {
            let key = self.key("ca_file");
            for cert in pem::certs(&key, path)? {
                roots.add(cert).map_err(|e| TlsError::File {
                    key: key.clone(),
                    path: path.clone(),
                    detail: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("{}: no trusted root: {e}", self.section)))?;
        let name = match &self.config.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                TlsError::Config(format!(
                    "{}.server_name {name:?} is not a DNS name or IP address",
                    self.section
                ))
            })?),
            None => None,
        };
        Ok(Arc::new(Recording {
            inner,
            name,
            seen: self.server_cert.clone(),
        }))
    }
}

/// webpki verification against the configured name (if any), recording the server's leaf.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(end_entity.clone().into_owned());
        let name = self.name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
