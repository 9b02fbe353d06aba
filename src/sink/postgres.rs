//! The sink's store on PostgreSQL: several sink nodes on one database serve any gateway
//! (docs/DESIGN.md §11).

mod convert;
mod ingest;
pub mod migrate;
pub mod tls;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::tokio_postgres;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use uuid::Uuid;

use crate::contract::{Ack, Gap, IngestArgs};
use crate::event::Event;
use crate::sink::error::SinkError;
use crate::sink::store::SinkStats;
use convert::{chain, connect_hint, db_error};

/// Connections one sink node keeps to the database at most; ingests beyond it wait for one.
pub const POOL_SIZE: usize = 16;
/// Longest an ingest or cursor call waits for a pooled connection (or a new one) before it
/// fails with [`SinkError::Database`] (the relay retries).
pub const POOL_WAIT: Duration = Duration::from_secs(10);
/// Connect timeout when the URL sets none (`connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The sink store on a PostgreSQL database (schema: `migrations/`).
///
/// Every [`Ack`] it returns describes a transaction committed with `synchronous_commit = on`
/// (forced on every connection), so durable on the database server before the answer.
pub struct PgStore {
    pool: Pool,
    stats: Mutex<SinkStats>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/dbname[?...]`, libpq's URL
    /// or key=value form), applies the schema migrations the database lacks, and returns a
    /// store whose connections are pooled ([`POOL_SIZE`]). TLS by rustls ([`tls::connector`]):
    /// `sslmode=require`, or the default `prefer` when the server offers it; `sslrootcert=FILE`
    /// adds a CA to the webpki roots; `sslmode=disable` connects plain.
    ///
    /// # Errors
    /// [`SinkError::Database`] when the URL does not parse, the server cannot be reached or a
    /// migration fails; [`SinkError::Corrupt`] for a schema newer than this binary's.
    pub async fn connect(url: &str) -> Result<PgStore, SinkError> {
        let (url, root_cert) = tls::split_root_cert(url);
        let tls = tls::connector(root_cert.as_deref())?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| SinkError::Database(format!("bad PostgreSQL URL: {e}")))?;
        // An admin may have turned it off for the database; an answer must mean durable.
        let options = format!(
            "{} -c synchronous_commit=on",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim_start());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| SinkError::Database(format!("connection pool: {e}")))?;
        let store = PgStore {
            pool,
            stats: Mutex::default(),
        };
        let mut client = store.client().await?;
        migrate::migrate(&mut client).await?;
        drop(client);
        Ok(store)
    }

    /// Stores a batch (`edge_ingest`) in one transaction and answers with the
    /// stream's contiguous acked seq after `COMMIT`: the same answers as
    /// [`crate::sink::SinkStore::ingest`].
    ///
    /// Batches of one stream from any number of nodes are serialised by a row lock on the
    /// stream (`SELECT ... FOR UPDATE`); events are inserted set-based (`UNNEST`) with
    /// `ON CONFLICT DO NOTHING`, so a seq is stored once, first come.
    ///
    /// # Errors
    /// [`SinkError::InvalidBatch`] (nothing stored) for the batches the sled store refuses,
    /// and also for a seq or gap end above `ingest::MAX_SEQ` or a `gateway`, `source`,
    /// `kind` or `time` holding a NUL character (PostgreSQL text cannot); [`SinkError::Database`]
    /// when the database fails (nothing of the batch is committed then).
    pub async fn ingest(&self, args: &IngestArgs) -> Result<Ack, SinkError> {
        crate::sink::store::validate(args)?;
        ingest::validate(args)?;
        let mut client = self.client().await?;
        let outcome = ingest::ingest(&mut client, args).await?;
        if !outcome.counted {
            return Ok(outcome.ack);
        }
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.batches += 1;
        stats.events_stored += outcome.stored;
        stats.duplicates_ignored += args.events.len() as u64 - outcome.stored;
        Ok(outcome.ack)
    }

    /// The stream's contiguous acked seq (`edge_cursor`) as last committed by any node;
    /// `acked_seq: None` when the stream is unknown or nothing is contiguous yet.
    ///
    /// # Errors
    /// [`SinkError::Database`].
    pub async fn cursor(&self, gateway: &str, stream: Uuid) -> Result<Ack, SinkError> {
        let client = self.client().await?;
        ingest::acked_seq(&client, gateway, stream).await
    }

    /// All stored events of a stream, in seq order (empty for an unknown stream).
    ///
    /// # Errors
    /// [`SinkError::Database`], or [`SinkError::Corrupt`] for a stored `data_text` that is
    /// not JSON.
    pub async fn events(&self, gateway: &str, stream: Uuid) -> Result<Vec<Event>, SinkError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, id, source, kind, time, data, data_text FROM events
                 WHERE gateway = $1 AND stream = $2 ORDER BY seq",
                &[&gateway, &stream],
            )
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let data = match row.get::<_, Option<serde_json::Value>>(5) {
                    Some(data) => data,
                    None => serde_json::from_str(row.get::<_, &str>(6))
                        .map_err(|e| SinkError::Corrupt(format!("event seq {seq}: {e}")))?,
                };
                Ok(Event {
                    id: row.get(1),
                    seq: seq as u64,
                    source: row.get(2),
                    kind: row.get(3),
                    time: row.get(4),
                    data,
                })
            })
            .collect()
    }

    /// Recorded gaps of a stream, in seq order (merged as the sled store merges them).
    ///
    /// # Errors
    /// [`SinkError::Database`].
    pub async fn gaps(&self, gateway: &str, stream: Uuid) -> Result<Vec<Gap>, SinkError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT dropped_from, dropped_to FROM gaps
                 WHERE gateway = $1 AND stream = $2 ORDER BY dropped_from",
                &[&gateway, &stream],
            )
            .await
            .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|row| Gap {
                dropped_from: row.get::<_, i64>(0) as u64,
                dropped_to: row.get::<_, i64>(1) as u64,
            })
            .collect())
    }

    /// Every known (gateway, stream), sorted by bytes (not by the database's collation).
    ///
    /// # Errors
    /// [`SinkError::Database`].
    pub async fn streams(&self) -> Result<Vec<(String, Uuid)>, SinkError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT gateway, stream FROM streams", &[])
            .await
            .map_err(db_error)?;
        let mut out: Vec<(String, Uuid)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        out.sort();
        Ok(out)
    }

    /// This node's counters since [`PgStore::connect`] (in memory, not shared between nodes).
    pub fn stats(&self) -> SinkStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, SinkError> {
        self.pool.get().await.map_err(|e| {
            let hint = connect_hint(&e)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            SinkError::Database(format!("no database connection: {}{hint}", chain(&e)))
        })
    }
}
