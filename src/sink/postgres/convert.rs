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
