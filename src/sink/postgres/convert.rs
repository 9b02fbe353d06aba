//! PostgreSQL's values and errors as the sink's: a stream row's acked seq as an [`Ack`], a
//! driver or server error as [`SinkError::Database`].

use deadpool_postgres::tokio_postgres;
use uuid::Uuid;

use crate::contract::Ack;
use crate::sink::error::SinkError;
use crate::sink::keys::NO_ACK;

/// A database error with the server's own message (tokio-postgres' `Display` alone says only
/// "db error").
pub(super) fn db_error(e: tokio_postgres::Error) -> SinkError {
    match e.as_db_error() {
        Some(db) => SinkError::Database(format!(
            "{} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        )),
        None => SinkError::Database(chain(&e)),
    }
}

/// `e` and its sources, `: `-separated (the TLS handshake's reason sits two levels down).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = s.source();
    }
    text
}

/// What to do about a connection error, when its cause is one an operator can fix in the URL:
/// a server certificate the node does not trust (rustls `InvalidCertificate`, e.g. Debian's
/// self-signed "snakeoil" certificate under the default `sslmode=prefer`). `None` otherwise.
pub(super) fn connect_hint(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(e);
    while let Some(err) = next {
        // tokio-rustls reports the handshake's rustls::Error inside an io::Error, whose
        // `source()` skips it; `get_ref` reaches it.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        let untrusted = [Some(err), inner].into_iter().flatten().any(|e| {
            matches!(
                e.downcast_ref::<rustls::Error>(),
                Some(rustls::Error::InvalidCertificate(_))
            )
        });
        if untrusted {
            return Some(
                "the database server's certificate is not trusted: add sslrootcert=FILE (its \
                 CA) to the URL, or sslmode=disable on a trusted network (README, Run a fleet)",
            );
        }
        next = err.source();
    }
    None
}

/// The answer for a stream row: acked seq 0 is "nothing yet".
pub(super) fn ack_of(acked_seq: i64, acked_id: Option<Uuid>) -> Ack {
    if acked_seq == 0 {
        return NO_ACK;
    }
    Ack {
        acked_seq: Some(acked_seq as u64),
        acked_id,
    }
}
