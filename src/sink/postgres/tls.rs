//! TLS of the sink's PostgreSQL connections: rustls (ring provider) with the webpki roots, plus
//! the CA of `sslrootcert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::sink::error::SinkError;

/// The URL parameter naming a PEM file of CA certificates, as libpq spells it. tokio-postgres
/// does not know it, so [`split_root_cert`] takes it out before the URL is parsed.
pub const ROOT_CERT_PARAM: &str = "sslrootcert";

/// `url` without its `sslrootcert` parameter, and that parameter's path. Both forms: the URL
/// (`postgres://h/db?sslmode=require&sslrootcert=/etc/ca.pem`) and key=value
/// (`host=h sslmode=require sslrootcert=/etc/ca.pem`; an unquoted value).
pub fn split_root_cert(url: &str) -> (String, Option<PathBuf>) {
    let key = format!("{ROOT_CERT_PARAM}=");
    if let Some((base, query)) = url.split_once('?')
        && url.contains("://")
    {
        let (mut kept, mut path) = (Vec::new(), None);
        for pair in query.split('&') {
            match pair.strip_prefix(&key) {
                Some(value) => path = Some(PathBuf::from(value)),
                None => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        return (format!("{base}{rest}"), path);
    }
    let (mut kept, mut path) = (Vec::new(), None);
    for word in url.split_whitespace() {
        match word.strip_prefix(&key) {
            Some(value) => path = Some(PathBuf::from(value)),
            None => kept.push(word),
        }
    }
    (kept.join(" "), path)
}

/// The TLS connector: used when the URL's `sslmode` is `prefer` (the default: TLS if the server
/// offers it) or `require`. The server's certificate is always verified, host name included,
/// against the webpki roots and the certificates of `ca_file` (stricter than libpq's
/// `require`, which verifies nothing).
///
/// # Errors
/// [`SinkError::Database`] when `ca_file` cannot be read or holds no certificate.
pub fn connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, SinkError> {
    let fail = |what: String| SinkError::Database(what);
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(format!("{ROOT_CERT_PARAM} {shown}: {e}")))?;
        if certs.is_empty() {
            return Err(fail(format!("{ROOT_CERT_PARAM} {shown}: no certificate")));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| fail(format!("{ROOT_CERT_PARAM} {shown}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_cert_parameter_is_taken_out_of_both_forms() {
        let cases = [
            (
                "postgres://u@h/db?sslmode=require&sslrootcert=/etc/ca.pem",
                "postgres://u@h/db?sslmode=require",
            ),
            (
                "postgres://u@h/db?sslrootcert=/etc/ca.pem",
                "postgres://u@h/db",
            ),
            (
                "host=h sslrootcert=/etc/ca.pem sslmode=require",
                "host=h sslmode=require",
            ),
        ];
        for (url, rest) in cases {
            let (kept, path) = split_root_cert(url);
            assert_eq!(
                (kept.as_str(), path),
                (rest, Some(PathBuf::from("/etc/ca.pem")))
            );
        }
        let plain = "postgres://u@h/db?sslmode=disable";
        assert_eq!(split_root_cert(plain), (plain.to_owned(), None));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(connector(Some(&dir.path().join("none.pem"))).is_err());
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        assert!(connector(Some(&dir.path().join("empty.pem"))).is_err());
        assert!(connector(None).is_ok());
    }
}
