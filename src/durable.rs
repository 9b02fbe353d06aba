//! The one way the crate makes sled writes durable: `flush` (fsync) on tokio's blocking pool.
//
// sled's own `flush_async` runs the same `flush` on sled's private thread pool, which tokio
// cannot see: under a paused clock (tokio tests, the turmoil simulation) the runtime then looks
// idle and jumps time ahead while the fsync is still running. On tokio's blocking pool the
// clock waits for it, so an fsync takes no simulated time; in production the cost is the same
// thread hop.

/// Flushes every dirty sled buffer of `db` to disk (fsync); returns the bytes written.
///
/// # Errors
/// sled's I/O error, or `Io` if the blocking task could not run (runtime shutting down).
pub(crate) async fn flush(db: &sled::Db) -> sled::Result<usize> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush())
        .await
        .map_err(|e| sled::Error::Io(std::io::Error::other(format!("fsync task: {e}"))))?
}
