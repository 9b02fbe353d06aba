//! A TLS failure in words: which side is at fault and which setting or file to look at.

use std::error::Error as StdError;
use std::io;

use rustls::{AlertDescription, CertificateError};

use super::client::ClientTls;

/// The first `rustls::Error` in `e`'s source chain, looking inside (nested) `io::Error`s too,
/// whose `source()` skips the error they wrap.
pub fn find_rustls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(found) = e.downcast_ref::<rustls::Error>() {
        return Some(found);
    }
    let wrapped = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref());
    if let Some(found) = wrapped.and_then(|inner| find_rustls(inner)) {
        return Some(found);
    }
    e.source().and_then(find_rustls)
}

impl ClientTls {
    /// `e` in words, e.g. "TLS: the server's certificate is not signed by a CA this client
    /// trusts (upstream.tls.ca_file /etc/ca.pem) ...".
    pub fn explain(&self, e: &rustls::Error) -> String {
        let config = self.config();
        let why = match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => {
                    let trusted = match (&config.ca_file, config.trusts_public_roots()) {
                        (Some(ca), false) => format!("{} {}", self.key("ca_file"), ca.display()),
                        (Some(ca), true) => format!(
                            "{} {} and the public roots",
                            self.key("ca_file"),
                            ca.display()
                        ),
                        (None, _) => format!("the public roots; set {}", self.key("ca_file")),
                    };
                    format!(
                        "server side: its certificate is not signed by a CA this client trusts \
                         ({trusted})"
                    )
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    let presented = match c {
                        CertificateError::NotValidForNameContext {
                            expected,
                            presented,
                        } => {
                            // rustls shows the presented names as `DnsName("a.example")`.
                            let names: Vec<&str> = presented
                                .iter()
                                .map(|p| p.split('"').nth(1).unwrap_or(p))
                                .collect();
                            format!(" {}; it names {}", expected.to_str(), names.join(", "))
                        }
                        _ => String::new(),
                    };
                    format!(
                        "server side: its certificate is not valid for the name asked for{presented} \
                         (connect by a name it carries, or set {})",
                        self.key("server_name")
                    )
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "server side: its certificate has expired".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "server side: its certificate is not valid yet (or this clock is wrong)"
                        .to_owned()
                }
                other => format!("server side: its certificate was refused: {other:?}"),
            },
            rustls::Error::AlertReceived(alert) if refuses_client_cert(*alert) => {
                match &config.cert_file {
                    None => format!(
                        "client side: the server wants a client certificate ({alert:?}); set {} \
                         and {}",
                        self.key("cert_file"),
                        self.key("key_file")
                    ),
                    Some(cert) => format!(
                        "client side: the server refused the client certificate {} {} \
                         ({alert:?}{})",
                        self.key("cert_file"),
                        cert.display(),
                        if *alert == AlertDescription::CertificateExpired {
                            ": it has expired"
                        } else {
                            ": is it signed by a CA the server trusts?"
                        }
                    ),
                }
            }
            other => other.to_string(),
        };
        format!("TLS: {why}")
    }

    /// [`ClientTls::explain`] of the first rustls error in `e`'s chain, if there is one.
    pub fn explain_chain(&self, e: &(dyn StdError + 'static)) -> Option<String> {
        if let Some(found) = find_rustls(e) {
            return Some(self.explain(found));
        }
        // rumqttc keeps only the text of an I/O error met while decoding a packet
        // (`mqttbytes::Error::Io(String)`), which is where TLS 1.3 delivers a server's alert
        // refusing the client certificate: read the alert back from rustls's wording.
        let mut text = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            text = format!("{text}: {cause}");
            next = cause.source();
        }
        let name = text.split("received fatal alert: ").nth(1)?;
        let name = name.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
        let alert = (0..=u8::MAX)
            .map(AlertDescription::from)
            .find(|a| format!("{a:?}") == name)?;
        Some(self.explain(&rustls::Error::AlertReceived(alert)))
    }

    /// `e`, or an `io::Error` of the same kind saying its TLS cause in words.
    pub fn explain_io(&self, e: io::Error) -> io::Error {
        match self.explain_chain(&e) {
            Some(text) => io::Error::new(e.kind(), text),
            None => e,
        }
    }
}

/// Alerts a server sends when it does not accept the client's certificate (RFC 8446 §6.2).
fn refuses_client_cert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
            | AlertDescription::DecryptError
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsConfig;

    fn device() -> ClientTls {
        let config = TlsConfig {
            cert_file: Some("/etc/edge-relay/device.pem".into()),
            key_file: Some("/etc/edge-relay/device.key".into()),
            ..TlsConfig::default()
        };
        ClientTls::new("upstream.tls", config)
    }

    #[test]
    fn finds_rustls_errors_inside_nested_io_errors() {
        let expired = rustls::Error::AlertReceived(AlertDescription::CertificateExpired);
        let nested = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, expired));
        let text = device().explain_chain(&nested).unwrap();
        assert_eq!(
            text,
            "TLS: client side: the server refused the client certificate upstream.tls.cert_file \
             /etc/edge-relay/device.pem (CertificateExpired: it has expired)"
        );
        assert!(device().explain_chain(&io::Error::other("reset")).is_none());
    }

    #[test]
    fn reads_an_alert_kept_only_as_text() {
        // rumqttc: `Mqtt state: ...: IO: received fatal alert: CertificateRequired`.
        let e = io::Error::other("IO: received fatal alert: CertificateRequired");
        let tls = ClientTls::new("--mqtt", TlsConfig::default());
        assert_eq!(
            tls.explain_chain(&e).unwrap(),
            "TLS: client side: the server wants a client certificate (CertificateRequired); set \
             --mqtt-cert and --mqtt-key"
        );
    }
}
