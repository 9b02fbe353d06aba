//! The PostgreSQL store's schema: versioned migrations embedded in the binary, applied at start.

use deadpool_postgres::Client;

use crate::sink::error::SinkError;
use crate::sink::postgres::convert::db_error;

/// The migrations in order: (version, SQL). A released one is never edited; a change is a new
/// version. Versions applied are recorded in `edge_relay_migrations`.
pub const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("migrations/0001_init.sql"))];

/// Key of the transaction-level advisory lock that serialises migrating nodes, so that sink
/// nodes started together apply each migration once.
const LOCK_KEY: i64 = 0x6564_6765_7265_6c61; // "edgerela"

/// Applies every migration of [`MIGRATIONS`] the database lacks, each in its own transaction
/// under `LOCK_KEY`. Returns the schema version now in force.
///
/// # Errors
/// [`SinkError::Database`] when a statement fails, or [`SinkError::Corrupt`] when the database
/// holds a newer schema than this binary knows (a newer sink migrated it; refuse to run on it).
pub async fn migrate(client: &mut Client) -> Result<i32, SinkError> {
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    for &(version, sql) in MIGRATIONS {
        let txn = client.transaction().await.map_err(db_error)?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(db_error)?;
        txn.batch_execute(
            "CREATE TABLE IF NOT EXISTS edge_relay_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db_error)?;
        let current: Option<i32> = txn
            .query_one("SELECT max(version) FROM edge_relay_migrations", &[])
            .await
            .map_err(db_error)?
            .get(0);
        let current = current.unwrap_or(0);
        if current > newest {
            return Err(SinkError::Corrupt(format!(
                "the database has schema version {current}; this sink knows up to {newest}"
            )));
        }
        if current >= version {
            continue;
        }
        txn.batch_execute(sql).await.map_err(db_error)?;
        txn.execute(
            "INSERT INTO edge_relay_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        log::info!(version = version; "sink: database schema migrated");
    }
    Ok(newest)
}
