//! One `edge_ingest` as one PostgreSQL transaction: lock the stream row, insert the new events,
//! merge the gap, advance the acked seq.

use deadpool_postgres::tokio_postgres::Row;
use deadpool_postgres::tokio_postgres::types::ToSql;
use deadpool_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::contract::{Ack, Gap, IngestArgs};
use crate::sink::error::SinkError;
use crate::sink::postgres::convert::{ack_of, db_error};

// Design: the stream row's lock (FOR UPDATE) serialises batches of one stream across nodes,
// so within the transaction the acked seq, the gaps and the events above the acked seq are
// stable; at READ COMMITTED each statement sees what earlier holders of the lock committed.
// The acked seq walks the same way as the sled store's: at each next seq an event run first,
// else a gap.

/// Largest seq (and gap end) the PostgreSQL store takes: `bigint`, minus one so `seq + 1`
/// cannot overflow in SQL. A relay reaches it after 9.2e18 events.
pub const MAX_SEQ: u64 = i64::MAX as u64 - 1;

/// What one committed ingest did.
pub(super) struct Outcome {
    /// The stream's acked seq after the commit.
    pub ack: Ack,
    /// Events of the batch inserted (the rest were duplicates).
    pub stored: u64,
    /// Whether it counts as a batch: not an empty call about an unknown stream (as sled).
    pub counted: bool,
}

/// The PostgreSQL store's own limits, on top of the contract's rules (`store::validate`).
pub(super) fn validate(args: &IngestArgs) -> Result<(), SinkError> {
    let invalid = |reason: String| Err(SinkError::InvalidBatch(reason));
    if args.gateway.contains('\0') {
        return invalid("`gateway` holds a NUL character".into());
    }
    let last = args.events.last().map(|e| e.seq);
    let gap_end = args.gap.map(|g| g.dropped_to);
    if let Some(seq) = last.max(gap_end).filter(|&s| s > MAX_SEQ) {
        return invalid(format!("seq {seq} above {MAX_SEQ}, the store's largest"));
    }
    for (i, e) in args.events.iter().enumerate() {
        if e.source.contains('\0') || e.kind.contains('\0') || e.time.contains('\0') {
            return invalid(format!(
                "events[{i}]: `source`, `kind` or `time` holds a NUL character"
            ));
        }
    }
    Ok(())
}

/// The stream's committed acked seq.
pub(super) async fn acked_seq(
    client: &impl GenericClient,
    gateway: &str,
    stream: Uuid,
) -> Result<Ack, SinkError> {
    Ok(stream_row(client, gateway, stream)
        .await?
        .unwrap_or(ack_of(0, None)))
}

/// The stream's committed acked seq, `None` for an unknown stream.
async fn stream_row(
    client: &impl GenericClient,
    gateway: &str,
    stream: Uuid,
) -> Result<Option<Ack>, SinkError> {
    let row = row_opt(
        client,
        "SELECT acked_seq, acked_id FROM streams WHERE gateway = $1 AND stream = $2",
        &[&gateway, &stream],
    )
    .await?;
    Ok(row.map(|r| ack_of(r.get(0), r.get(1))))
}

/// Runs one validated batch as one transaction; returns after `COMMIT`.
pub(super) async fn ingest(client: &mut Client, args: &IngestArgs) -> Result<Outcome, SinkError> {
    let (gw, stream) = (args.gateway.as_str(), args.stream);
    if args.events.is_empty() && args.gap.is_none() {
        // Nothing to store: the committed acked seq, without creating the stream.
        let row = stream_row(client, gw, stream).await?;
        return Ok(Outcome {
            counted: row.is_some(),
            ack: row.unwrap_or(ack_of(0, None)),
            stored: 0,
        });
    }
    let txn = client.transaction().await.map_err(db_error)?;
    const LOCK: &str =
        "SELECT acked_seq, acked_id FROM streams WHERE gateway = $1 AND stream = $2 FOR UPDATE";
    // Lock and insert in one round trip: sent in this order (both statements prepared, so
    // each is sent at its first poll) and run in order, so the insert, which skips seqs at or
    // below the acked seq it reads, starts once the lock is held.
    txn.prepare_cached(LOCK).await.map_err(db_error)?;
    txn.prepare_cached(INSERT_EVENTS).await.map_err(db_error)?;
    let key: [&(dyn ToSql + Sync); 2] = [&gw, &stream];
    let (row, mut stored) =
        futures::try_join!(row_opt(&txn, LOCK, &key), insert_events(&txn, args))?;
    let row = match row {
        Some(row) => row,
        None => {
            // A new stream, as the lock saw it.
            exec(
                &txn,
                "INSERT INTO streams (gateway, stream) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&gw, &stream],
            )
            .await?;
            let row = row_one(&txn, LOCK, &[&gw, &stream]).await?;
            log::info!(gateway = gw, stream:% = stream; "sink: new stream");
            // The first insert stored nothing, or (the row committed meanwhile by another
            // node) it stored under the lock it took: count both.
            stored += insert_events(&txn, args).await?;
            row
        }
    };
    let (old_acked_seq, old_id): (i64, Option<Uuid>) = (row.get(0), row.get(1));
    let old_acked_seq = old_acked_seq as u64;

    if let Some(gap) = args.gap {
        // The gap ends before the batch's first event: the events just stored are not in it.
        record_gap(&txn, gw, stream, old_acked_seq, gap).await?;
    }
    let above = &args.events[args.events.partition_point(|e| e.seq <= old_acked_seq)..];
    // The usual batch: the next seqs in a row, all new; the acked seq walks over them unasked.
    let (from, from_id) = match above.last() {
        Some(last) if stored == above.len() as u64 && last.seq - old_acked_seq == stored => {
            (last.seq, Some(last.id))
        }
        _ => (old_acked_seq, old_id),
    };
    let (acked_seq, acked_id) = advance(&txn, gw, stream, from, from_id).await?;
    if (acked_seq, acked_id) != (old_acked_seq, old_id) {
        exec(
            &txn,
            "UPDATE streams SET acked_seq = $3, acked_id = $4 WHERE gateway = $1 AND stream = $2",
            &[&gw, &stream, &(acked_seq as i64), &acked_id],
        )
        .await?;
    }
    txn.commit().await.map_err(db_error)?;
    log::debug!(gateway = gw, stream:% = stream, stored = stored,
        duplicates = args.events.len() as u64 - stored, acked_seq = acked_seq; "sink: batch");
    Ok(Outcome {
        ack: ack_of(acked_seq as i64, acked_id),
        stored,
        counted: true,
    })
}

/// Records `gap` minus what is at or below `acked_seq` and minus the seqs stored events hold (a
/// relay with several batches in flight can report as dropped events that already arrived),
/// each part merged with the stored gaps it overlaps or touches.
async fn record_gap(
    txn: &impl GenericClient,
    gw: &str,
    stream: Uuid,
    acked_seq: u64,
    gap: Gap,
) -> Result<(), SinkError> {
    if gap.dropped_to <= acked_seq {
        return Ok(());
    }
    let (lo, hi) = (gap.dropped_from.max(acked_seq + 1), gap.dropped_to);
    let stored = rows(
        txn,
        "SELECT seq FROM events WHERE gateway = $1 AND stream = $2
             AND seq BETWEEN $3::int8 AND $4::int8 ORDER BY seq",
        &[&gw, &stream, &(lo as i64), &(hi as i64)],
    )
    .await?;
    let taken = stored.iter().map(|r| {
        let seq = r.get::<_, i64>(0) as u64;
        (seq, seq)
    });
    for (from, to) in crate::sink::uncovered::uncovered(lo, hi, taken) {
        merge_gap(txn, gw, stream, from as i64, to as i64).await?;
    }
    Ok(())
}

/// Records `lo..=hi` merged with the stored gaps it overlaps or touches (stored gaps stay
/// disjoint and non-touching).
async fn merge_gap(
    txn: &impl GenericClient,
    gw: &str,
    stream: Uuid,
    mut lo: i64,
    mut hi: i64,
) -> Result<(), SinkError> {
    let found = rows(
        txn,
        "SELECT dropped_from, dropped_to FROM gaps WHERE gateway = $1 AND stream = $2
             AND dropped_from <= $4::int8 + 1 AND dropped_to >= $3::int8 - 1 ORDER BY dropped_from",
        &[&gw, &stream, &lo, &hi],
    )
    .await?;
    let touching: Vec<(i64, i64)> = found.iter().map(|r| (r.get(0), r.get(1))).collect();
    if touching.iter().any(|&(from, to)| from <= lo && to >= hi) {
        return Ok(());
    }
    for &(from, to) in &touching {
        (lo, hi) = (lo.min(from), hi.max(to));
    }
    let starts: Vec<i64> = touching.iter().map(|t| t.0).collect();
    exec(
        txn,
        "DELETE FROM gaps WHERE gateway = $1 AND stream = $2 AND dropped_from = ANY($3)",
        &[&gw, &stream, &starts],
    )
    .await?;
    exec(
        txn,
        "INSERT INTO gaps (gateway, stream, dropped_from, dropped_to) VALUES ($1, $2, $3, $4)",
        &[&gw, &stream, &lo, &hi],
    )
    .await?;
    Ok(())
}

/// The batch's events (`$3`.. as arrays, data as JSON text) above the committed acked seq.
///
/// The statement takes the stream row's lock itself (`FOR UPDATE` in the subquery), so it never
/// inserts an event without it, even when it runs unlocked: the row of a new stream can be
/// committed by another node between the pipelined `LOCK`, which found none, and this insert.
/// Inserted then without the lock, its events could wait on a holder of the lock while that
/// holder waited on them: a deadlock (40P01), seen as a failed `edge_ingest` under load.
const INSERT_EVENTS: &str = "INSERT INTO events
        (gateway, stream, seq, id, source, kind, time, data, data_text)
    SELECT $1, $2, u.seq, u.id, u.source, u.kind, u.time, u.data::jsonb, u.data_text
    FROM UNNEST($3::int8[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[],
        $9::text[]) AS u (seq, id, source, kind, time, data, data_text)
    WHERE u.seq > (SELECT acked_seq FROM streams WHERE gateway = $1 AND stream = $2 FOR UPDATE)
    ON CONFLICT DO NOTHING";

/// Inserts the batch's events above the stream's committed acked seq (none when the stream has no
/// row yet) in one statement; a seq already stored keeps its first event. Returns how many
/// were inserted.
async fn insert_events(txn: &impl GenericClient, args: &IngestArgs) -> Result<u64, SinkError> {
    let above = &args.events;
    if above.is_empty() {
        return Ok(0);
    }
    let n = above.len();
    let (mut seqs, mut ids, mut sources, mut kinds, mut times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut data, mut data_text) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for e in above {
        seqs.push(e.seq as i64);
        ids.push(e.id);
        sources.push(e.source.as_str());
        kinds.push(e.kind.as_str());
        times.push(e.time.as_str());
        // Encoded once and sent as text, cast to jsonb by the server. jsonb refuses \u0000 in
        // strings; such data is kept as its JSON text.
        let text = serde_json::to_string(&e.data)
            .map_err(|err| SinkError::InvalidBatch(format!("seq {}: data: {err}", e.seq)))?;
        if text.contains("\\u0000") {
            data.push(None);
            data_text.push(Some(text));
        } else {
            data.push(Some(text));
            data_text.push(None);
        }
    }
    let inserted = exec(
        txn,
        INSERT_EVENTS,
        &[
            &args.gateway,
            &args.stream,
            &seqs,
            &ids,
            &sources,
            &kinds,
            &times,
            &data,
            &data_text,
        ],
    )
    .await?;
    Ok(inserted)
}

/// Walks the acked seq up from `acked_seq` over stored event runs and gaps; returns the new
/// acked seq and the id of the event it ends on (`None` when it ends a gap; unchanged when it
/// does not move).
/// One statement per step: the run of events at the next seq, then the gap right after it.
async fn advance(
    txn: &impl GenericClient,
    gw: &str,
    stream: Uuid,
    mut acked_seq: u64,
    mut acked_id: Option<Uuid>,
) -> Result<(u64, Option<Uuid>), SinkError> {
    // `run`: the last seq of the run of consecutive events that starts at $3, if one does;
    // then the gap that holds the seq after that run (or $3 itself, without a run).
    const STEP: &str = "WITH run AS (
            SELECT e.seq, e.id FROM events e
            WHERE e.gateway = $1 AND e.stream = $2 AND e.seq >= $3
              AND EXISTS (SELECT 1 FROM events f
                          WHERE f.gateway = $1 AND f.stream = $2 AND f.seq = $3)
              AND NOT EXISTS (SELECT 1 FROM events n
                              WHERE n.gateway = $1 AND n.stream = $2 AND n.seq = e.seq + 1)
            ORDER BY e.seq LIMIT 1)
        SELECT r.seq, r.id, g.dropped_to
        FROM (SELECT 1) AS one
        LEFT JOIN run r ON true
        LEFT JOIN gaps g ON g.gateway = $1 AND g.stream = $2
            AND g.dropped_from <= coalesce(r.seq, $3 - 1) + 1
            AND g.dropped_to >= coalesce(r.seq, $3 - 1) + 1";
    while acked_seq < MAX_SEQ {
        let next = (acked_seq + 1) as i64;
        let row = row_one(txn, STEP, &[&gw, &stream, &next]).await?;
        if let Some(seq) = row.get::<_, Option<i64>>(0) {
            (acked_seq, acked_id) = (seq as u64, row.get(1));
        }
        // No event at acked seq + 1 now (a run ends before a missing seq): a gap, or the end.
        match row.get::<_, Option<i64>>(2) {
            Some(dropped_to) => (acked_seq, acked_id) = (dropped_to as u64, None),
            None => break,
        }
    }
    Ok((acked_seq, acked_id))
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs `sql` as a statement prepared once per connection; returns the rows it changed.
async fn exec(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64, SinkError> {
    let statement = c.prepare_cached(sql).await.map_err(db_error)?;
    c.execute(&statement, params).await.map_err(db_error)
}

/// [`exec`] for a query: all its rows.
async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, SinkError> {
    let statement = c.prepare_cached(sql).await.map_err(db_error)?;
    c.query(&statement, params).await.map_err(db_error)
}

/// [`exec`] for a query of at most one row.
async fn row_opt(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, SinkError> {
    let statement = c.prepare_cached(sql).await.map_err(db_error)?;
    c.query_opt(&statement, params).await.map_err(db_error)
}

/// [`exec`] for a query of exactly one row.
async fn row_one(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Row, SinkError> {
    let statement = c.prepare_cached(sql).await.map_err(db_error)?;
    c.query_one(&statement, params).await.map_err(db_error)
}
