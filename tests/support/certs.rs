//! A throwaway PKI for the TLS tests (rcgen): a CA, server and client certificates signed by
//! it, expired ones, written as PEM files into a temp dir.

use std::path::{Path, PathBuf};

use edge_relay::config::TlsConfig;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, date_time_ymd,
};

/// A certificate authority that signs leaf certificates into files.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate's PEM file.
    pub cert: PathBuf,
}

/// A leaf's certificate and key files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a leaf is for and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from 1975 to 4096 (rcgen's default).
    Current,
    /// Expired at the start of 2001.
    Expired,
}

impl Ca {
    /// A new CA named `name`, its certificate written to `dir/{name}-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert, issuer.pem()).unwrap();
        Ca { issuer, cert }
    }

    /// A server certificate for `names` (DNS names or IP addresses), as `dir/{file}.pem` and
    /// `dir/{file}.key`.
    pub fn server(&self, dir: &Path, file: &str, names: &[&str]) -> Leaf {
        self.leaf(
            dir,
            file,
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            Validity::Current,
        )
    }

    /// A client (device) certificate with common name `cn`.
    pub fn client(&self, dir: &Path, file: &str, cn: &str, validity: Validity) -> Leaf {
        self.leaf(
            dir,
            file,
            &[cn],
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
        )
    }

    fn leaf(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![usage];
        if validity == Validity::Expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        leaf
    }
}

impl Leaf {
    /// Puts this leaf's files in place of `to`'s, each by an atomic rename (a rotation on
    /// disk: key first, then certificate; a reader in between sees a mismatch and retries).
    pub fn install_as(&self, to: &Leaf) {
        for (from, to) in [(&self.key, &to.key), (&self.cert, &to.cert)] {
            let tmp = to.with_extension("rotating");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
    }
}

/// What `last_error` says of a server certificate of an unknown CA (`upstream.tls`).
pub const UNKNOWN_CA: &[&str] = &[
    "server side",
    "not signed by a CA this client trusts",
    "upstream.tls.ca_file",
];
/// ... of a server that refused the relay's (expired) client certificate.
pub const CLIENT_CERT_REFUSED: &[&str] = &[
    "client side",
    "refused the client certificate",
    "upstream.tls.cert_file",
    "expired",
];
/// ... of a server that wants a client certificate the relay does not have.
pub const NO_CLIENT_CERT: &[&str] = &[
    "client side",
    "wants a client certificate",
    "upstream.tls.cert_file",
];

/// TLS settings trusting only `ca`, presenting `client` if given.
pub fn client_tls(ca: &Path, client: Option<&Leaf>) -> TlsConfig {
    TlsConfig {
        ca_file: Some(ca.to_owned()),
        cert_file: client.map(|c| c.cert.clone()),
        key_file: client.map(|c| c.key.clone()),
        ..TlsConfig::default()
    }
}
