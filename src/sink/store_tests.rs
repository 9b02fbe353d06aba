//! Tests of [`super::SinkStore`] on a real sled store in a temp dir.

use super::*;

fn batch(stream: Uuid, seqs: &[u64], gap: Option<(u64, u64)>) -> IngestArgs {
    let event = |seq| Event {
        id: Uuid::now_v7(),
        seq,
        source: "ankle".into(),
        kind: "sensor".into(),
        time: "2026-11-21T05:00:00.015Z".into(),
        data: serde_json::json!({ "n": seq }),
    };
    IngestArgs {
        gateway: "gw-01".into(),
        stream,
        events: seqs.iter().map(|&seq| event(seq)).collect(),
        events_zstd: None,
        gap: gap.map(|(from, to)| gap_of(from, to)),
    }
}

fn gap_of(dropped_from: u64, dropped_to: u64) -> Gap {
    Gap {
        dropped_from,
        dropped_to,
    }
}

fn pair(ack: Ack) -> (Option<u64>, Option<Uuid>) {
    (ack.acked_seq, ack.acked_id)
}

/// Ingests a fresh batch and returns the acked seq.
async fn put(
    store: &SinkStore,
    stream: Uuid,
    seqs: &[u64],
    gap: Option<(u64, u64)>,
) -> Option<u64> {
    store
        .ingest(&batch(stream, seqs, gap))
        .await
        .unwrap()
        .acked_seq
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
        // The mark's id is read back from an event stored in pieces.
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
async fn stores_a_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream) = (open(&dir), Uuid::new_v4());
    assert_eq!(store.cursor("gw-01", stream).await.unwrap(), NO_ACK);
    let args = batch(stream, &[1, 2, 3], None);
    let ack = store.ingest(&args).await.unwrap();
    assert_eq!(pair(ack), (Some(3), Some(args.events[2].id)));
    assert_eq!(store.ingest(&args).await.unwrap(), ack);
    assert_eq!(store.cursor("gw-01", stream).await.unwrap(), ack);
    assert_eq!(store.events("gw-01", stream).unwrap(), args.events);
    let stats = store.stats();
    assert_eq!(
        (stats.batches, stats.events_stored, stats.duplicates_ignored),
        (2, 3, 3)
    );
    assert_eq!(store.streams().unwrap(), [("gw-01".to_owned(), stream)]);
    // The same stream id under another gateway is another stream.
    assert_eq!(store.cursor("gw-02", stream).await.unwrap(), NO_ACK);
}

#[tokio::test]
async fn mark_stays_contiguous_across_out_of_order_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream) = (open(&dir), Uuid::new_v4());
    let ahead = batch(stream, &[5, 6], None);
    assert_eq!(store.ingest(&ahead).await.unwrap(), NO_ACK);
    assert_eq!(put(&store, stream, &[1, 2], None).await, Some(2));
    // 3 and 4 close the hole: the mark runs over the stored 5 and 6 and names 6's id.
    let ack = store.ingest(&batch(stream, &[2, 3, 4], None)).await;
    assert_eq!(pair(ack.unwrap()), (Some(6), Some(ahead.events[1].id)));
    assert_eq!(seqs(&store, stream), [1, 2, 3, 4, 5, 6]);
    assert_eq!(store.stats().duplicates_ignored, 1);
    // Concurrent batches of one stream are serialised: whichever lands last sees the other.
    let (a, b) = (batch(stream, &[9, 10], None), batch(stream, &[7, 8], None));
    let (a, b) = tokio::join!(store.ingest(&a), store.ingest(&b));
    assert_eq!(a.unwrap().acked_seq.max(b.unwrap().acked_seq), Some(10));
}

#[tokio::test]
async fn gaps_count_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream) = (open(&dir), Uuid::new_v4());
    put(&store, stream, &[1, 2], None).await;
    assert_eq!(put(&store, stream, &[6, 7], Some((3, 5))).await, Some(7));
    // A gap alone moves the mark onto a seq with no event: no id.
    let ack = store.ingest(&batch(stream, &[], Some((8, 9)))).await;
    assert_eq!(pair(ack.unwrap()), (Some(9), None));
    // Gaps ahead of the mark are kept, merged with what they touch, and used later.
    assert_eq!(put(&store, stream, &[], Some((12, 14))).await, Some(9));
    assert_eq!(put(&store, stream, &[16], Some((13, 15))).await, Some(9));
    assert_eq!(put(&store, stream, &[10, 11], None).await, Some(16));
    // A gap at or below the mark changes nothing.
    assert_eq!(put(&store, stream, &[7], Some((1, 6))).await, Some(16));
    let gaps = [gap_of(3, 5), gap_of(8, 9), gap_of(12, 15)];
    assert_eq!(store.gaps("gw-01", stream).unwrap(), gaps);
    assert_eq!(seqs(&store, stream), [1, 2, 6, 7, 10, 11, 16]);
}

#[tokio::test]
async fn invalid_batch_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream) = (open(&dir), Uuid::new_v4());
    let mut nameless = batch(stream, &[1], None);
    nameless.gateway.clear();
    let mut cases = vec![
        nameless.clone(),
        batch(stream, &[0, 1], None),
        batch(stream, &[1, 3, 2], None),
        batch(stream, &[1, 2, 2], None),
        batch(stream, &[2, 3], Some((1, 2))),
        batch(stream, &[], Some((4, 3))),
        batch(stream, &[], Some((0, 3))),
    ];
    nameless.gateway = "g".repeat(MAX_GATEWAY_LEN + 1);
    cases.push(nameless);
    for args in cases {
        let err = store.ingest(&args).await.unwrap_err();
        assert!(matches!(err, SinkError::InvalidBatch(_)), "{err}");
    }
    assert!(store.streams().unwrap().is_empty());
    assert!(seqs(&store, stream).is_empty());
    assert_eq!(store.stats(), SinkStats::default());
}

#[tokio::test]
async fn survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream) = (open(&dir), Uuid::new_v4());
    let args = batch(stream, &[2, 3], Some((1, 1)));
    let ack = store.ingest(&args).await.unwrap();
    put(&store, stream, &[9], None).await;
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
    assert_eq!(put(&store, stream, &[4], None).await, Some(4));
    // A stream created after the reopen gets a key prefix of its own.
    let other = Uuid::new_v4();
    put(&store, other, &[1], None).await;
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
            mark: 3,
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
    // 5 and 6, converted, count as stored: only 4 is new, and the mark runs over them.
    let args = batch(stream, &[4, 5, 6, 7], None);
    let ack = store.ingest(&args).await.unwrap();
    assert_eq!(pair(ack), (Some(7), Some(args.events[3].id)));
    assert_eq!(store.stats().duplicates_ignored, 2);
    assert_eq!(seqs(&store, stream), [1, 2, 3, 4, 5, 6, 7]);
    drop(store);
    let db = sled::open(dir.path()).unwrap();
    assert!(db.open_tree(crate::sink::legacy::TREE).unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_overlapping_stored_runs_stores_only_the_holes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream) = (open(&dir), Uuid::new_v4());
    // Runs 3..=4 and 8..=9 ahead of the mark, then one batch across both.
    assert_eq!(put(&store, stream, &[3, 4], None).await, None);
    assert_eq!(put(&store, stream, &[8, 9], None).await, None);
    let kept = store.events("gw-01", stream).unwrap();
    let across = batch(stream, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], None);
    let ack = store.ingest(&across).await.unwrap();
    assert_eq!(pair(ack), (Some(10), Some(across.events[9].id)));
    assert_eq!(store.stats().duplicates_ignored, 4);
    let events = store.events("gw-01", stream).unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    // What was stored first stays (the resent 3, 4, 8, 9 carry other ids here).
    assert_eq!(events[2], kept[0]);
    assert_eq!(events[8], kept[3]);
}

/// With several batches in flight a relay can report as dropped seqs that already arrived
/// (it dropped them locally while their answer was lost): the recorded gap leaves them out.
#[tokio::test]
async fn a_gap_over_stored_events_is_recorded_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream) = (open(&dir), Uuid::new_v4());
    assert_eq!(put(&store, stream, &[4, 5], None).await, None);
    assert_eq!(put(&store, stream, &[9], None).await, None);
    assert_eq!(put(&store, stream, &[12], Some((1, 11))).await, Some(12));
    let gaps = [gap_of(1, 3), gap_of(6, 8), gap_of(10, 11)];
    assert_eq!(store.gaps("gw-01", stream).unwrap(), gaps);
    assert_eq!(seqs(&store, stream), [4, 5, 9, 12]);
    // A gap wholly over stored events records nothing.
    let other = Uuid::new_v4();
    put(&store, other, &[3, 4], None).await;
    assert_eq!(put(&store, other, &[], Some((3, 4))).await, None);
    assert!(store.gaps("gw-01", other).unwrap().is_empty());
}
