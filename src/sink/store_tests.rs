//! Tests of [`super::SinkStore`] on a real sled store in a temp dir: the shared contract cases
//! (`contract_cases.rs`, also run on PostgreSQL) and what is the sled store's own.

use super::*;

#[path = "contract_cases.rs"]
mod contract_cases;

use contract_cases::{batch, pair};

#[tokio::test]
async fn the_contract_cases_pass_on_sled() {
    let dirs = std::sync::Mutex::new(Vec::new());
    contract_cases::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SinkStore::open(dir.path()).unwrap());
        dirs.lock().unwrap().push(dir);
        async move { crate::sink::SinkBackend::from(store) }
    })
    .await;
}

/// Ingests a fresh batch and returns the acked seq.
async fn put(store: &SinkStore, stream: Uuid, seqs: &[u64]) -> Option<u64> {
    let args = batch(stream, seqs, None);
    store.ingest(&args).await.unwrap().acked_seq
}

fn seqs(store: &SinkStore, stream: Uuid) -> Vec<u64> {
    store
        .events("gw-01", stream)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

fn open(dir: &tempfile::TempDir) -> SinkStore {
    SinkStore::open(dir.path()).unwrap()
}

#[tokio::test]
async fn large_events_are_stored_without_sled_blobs_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream) = (open(&dir), Uuid::new_v4());
    for round in 0..8u64 {
        let mut args = batch(stream, &[2 * round + 1, 2 * round + 2], None);
        for (n, event) in args.events.iter_mut().enumerate() {
            let pad = [20_000, 64 * 1024 - 64][n];
            event.data = serde_json::json!({ "pad": "y".repeat(pad) });
        }
        let ack = store.ingest(&args).await.unwrap();
        assert_eq!(ack.acked_seq, Some(2 * round + 2));
        // The acked seq's id is read back from an event stored in pieces.
        let again = store.ingest(&batch(stream, &[], None)).await.unwrap();
        assert_eq!(again.acked_id, Some(args.events[1].id));
    }
    let events = store.events("gw-01", stream).unwrap();
    assert_eq!(events.len(), 16);
    assert!(events.iter().zip(1..).all(|(e, seq)| e.seq == seq));
    assert_eq!(
        events[15].data["pad"].as_str().unwrap().len(),
        64 * 1024 - 64
    );
    let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
    assert_eq!(blobs, 0, "sled wrote a blob file");
}

#[tokio::test]
async fn survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream) = (open(&dir), Uuid::new_v4());
    let args = batch(stream, &[2, 3], Some((1, 1)));
    let ack = store.ingest(&args).await.unwrap();
    put(&store, stream, &[9]).await;
    // sled locks the dir until the store is dropped.
    assert!(matches!(
        SinkStore::open(dir.path()),
        Err(SinkError::Open { .. })
    ));
    drop(store);

    let store = open(&dir);
    assert_eq!(store.cursor("gw-01", stream).await.unwrap(), ack);
    assert_eq!(store.events("gw-01", stream).unwrap()[..2], args.events[..]);
    assert_eq!(seqs(&store, stream), [2, 3, 9]);
    assert_eq!(store.gaps("gw-01", stream).unwrap(), [args.gap.unwrap()]);
    assert_eq!(put(&store, stream, &[4]).await, Some(4));
    // A stream created after the reopen gets a key prefix of its own.
    let other = Uuid::new_v4();
    put(&store, other, &[1]).await;
    assert_eq!(seqs(&store, other), [1]);
    assert_eq!(store.streams().unwrap().len(), 2);
}

#[tokio::test]
async fn a_store_of_the_first_layout_is_converted_to_runs_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let stream = Uuid::new_v4();
    let mut old = batch(stream, &[1, 2, 3, 5, 6], None);
    old.events[1].data = serde_json::json!({ "pad": "z".repeat(10_000) });
    {
        let db = sled::open(dir.path()).unwrap();
        let record = StreamRecord {
            prefix: 7,
            acked_seq: 3,
            acked_id: Some(old.events[2].id),
        };
        let skey = stream_key("gw-01", stream);
        db.open_tree("streams")
            .unwrap()
            .insert(skey, record.encode())
            .unwrap();
        let events = db.open_tree(crate::sink::legacy::TREE).unwrap();
        for event in &old.events {
            let json = serde_json::to_vec(event).unwrap();
            crate::sink::legacy::put_event(&events, &seq_key(7, event.seq), &json);
        }
        assert!(
            events.len() > old.events.len(),
            "the large event has pieces"
        );
        db.flush().unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.events("gw-01", stream).unwrap(), old.events);
    assert_eq!(
        pair(store.cursor("gw-01", stream).await.unwrap()),
        (Some(3), Some(old.events[2].id))
    );
    // 5 and 6, converted, count as stored: only 4 is new, and the acked seq runs over them.
    let args = batch(stream, &[4, 5, 6, 7], None);
    let ack = store.ingest(&args).await.unwrap();
    assert_eq!(pair(ack), (Some(7), Some(args.events[3].id)));
    assert_eq!(store.stats().duplicates_ignored, 2);
    assert_eq!(seqs(&store, stream), [1, 2, 3, 4, 5, 6, 7]);
    drop(store);
    // durable::open waits for the lock: a sled thread may hold the dropped store a moment longer
    // (a plain sled::open here failed with "could not acquire lock" under a loaded test run).
    let (db, _) = crate::durable::open(dir.path(), 1 << 20).unwrap();
    assert!(db.open_tree(crate::sink::legacy::TREE).unwrap().is_empty());
}
