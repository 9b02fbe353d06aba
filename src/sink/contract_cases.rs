//! The sink contract (docs/DESIGN.md §3) as cases any [`SinkBackend`] must pass: run on sled by the
//! store's unit tests and on PostgreSQL by `tests/sink_postgres.rs` (which includes this file).

use edge_relay::contract::{Ack, Gap, IngestArgs};
use edge_relay::event::Event;
use edge_relay::sink::SinkBackend;
use edge_relay::sink::SinkError;
use edge_relay::sink::store::{MAX_GATEWAY_LEN, SinkStats};
use futures::future::BoxFuture;
use uuid::Uuid;

/// A named case; each gets a store of its own, empty.
pub type Case = (&'static str, fn(SinkBackend) -> BoxFuture<'static, ()>);

/// Every case, in a fixed order.
pub fn cases() -> Vec<Case> {
    vec![
        ("stores_a_batch_once", |s| Box::pin(stores_a_batch_once(s))),
        ("mark_stays_contiguous_across_out_of_order_batches", |s| {
            Box::pin(acked_seq_stays_contiguous_across_out_of_order_batches(s))
        }),
        ("gaps_count_as_stored", |s| {
            Box::pin(gaps_count_as_stored(s))
        }),
        ("invalid_batch_stores_nothing", |s| {
            Box::pin(invalid_batch_stores_nothing(s))
        }),
        (
            "a_batch_overlapping_stored_runs_stores_only_the_holes",
            |s| Box::pin(a_batch_overlapping_stored_runs_stores_only_the_holes(s)),
        ),
        (
            "a_gap_over_an_event_stored_ahead_ends_the_mark_without_id",
            |s| Box::pin(a_gap_over_an_event_stored_ahead_ends_the_acked_seq_without_id(s)),
        ),
        ("a_gap_over_stored_events_is_recorded_without_them", |s| {
            Box::pin(a_gap_over_stored_events_is_recorded_without_them(s))
        }),
    ]
}

/// Runs every case, each on a store from `fresh`; a failure names its case.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = SinkBackend>,
{
    for (name, case) in cases() {
        eprintln!("contract case {name}");
        case(fresh().await).await;
    }
}

const NO_ACK: Ack = Ack {
    acked_seq: None,
    acked_id: None,
};

/// A batch of gateway `gw-01` with fresh ids.
pub fn batch(stream: Uuid, seqs: &[u64], gap: Option<(u64, u64)>) -> IngestArgs {
    let event = |seq| Event {
        id: Uuid::now_v7(),
        seq,
        source: "ankle".into(),
        kind: "sensor".into(),
        time: "2026-11-21T05:00:00.015Z".into(),
        data: serde_json::json!({ "n": seq, "x": [1.5, -2, "\u{0}"] }),
    };
    IngestArgs {
        gateway: "gw-01".into(),
        stream,
        events: seqs.iter().map(|&seq| event(seq)).collect(),
        events_zstd: None,
        gap: gap.map(|(from, to)| gap_of(from, to)),
    }
}

/// A gap of `dropped_from..=dropped_to`.
pub fn gap_of(dropped_from: u64, dropped_to: u64) -> Gap {
    Gap {
        dropped_from,
        dropped_to,
    }
}

/// The ack as a tuple.
pub fn pair(ack: Ack) -> (Option<u64>, Option<Uuid>) {
    (ack.acked_seq, ack.acked_id)
}

/// Ingests a fresh batch and returns the acked seq.
async fn put(
    store: &SinkBackend,
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

async fn seqs(store: &SinkBackend, stream: Uuid) -> Vec<u64> {
    let events = store.events("gw-01", stream).await.unwrap();
    events.iter().map(|e| e.seq).collect()
}

async fn stores_a_batch_once(store: SinkBackend) {
    let stream = Uuid::new_v4();
    assert_eq!(store.cursor("gw-01", stream).await.unwrap(), NO_ACK);
    // Nothing to store creates no stream.
    assert_eq!(
        store.ingest(&batch(stream, &[], None)).await.unwrap(),
        NO_ACK
    );
    assert!(store.streams().await.unwrap().is_empty());
    let args = batch(stream, &[1, 2, 3], None);
    let ack = store.ingest(&args).await.unwrap();
    assert_eq!(pair(ack), (Some(3), Some(args.events[2].id)));
    assert_eq!(store.ingest(&args).await.unwrap(), ack);
    assert_eq!(store.cursor("gw-01", stream).await.unwrap(), ack);
    assert_eq!(store.events("gw-01", stream).await.unwrap(), args.events);
    let stats = store.stats();
    assert_eq!(
        (stats.batches, stats.events_stored, stats.duplicates_ignored),
        (2, 3, 3)
    );
    assert_eq!(
        store.streams().await.unwrap(),
        [("gw-01".to_owned(), stream)]
    );
    // The same stream id under another gateway is another stream.
    assert_eq!(store.cursor("gw-02", stream).await.unwrap(), NO_ACK);
}

async fn acked_seq_stays_contiguous_across_out_of_order_batches(store: SinkBackend) {
    let stream = Uuid::new_v4();
    let ahead = batch(stream, &[5, 6], None);
    assert_eq!(store.ingest(&ahead).await.unwrap(), NO_ACK);
    assert_eq!(put(&store, stream, &[1, 2], None).await, Some(2));
    // 3 and 4 close the hole: the acked seq runs over the stored 5 and 6 and names 6's id.
    let ack = store.ingest(&batch(stream, &[2, 3, 4], None)).await;
    assert_eq!(pair(ack.unwrap()), (Some(6), Some(ahead.events[1].id)));
    assert_eq!(seqs(&store, stream).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(store.stats().duplicates_ignored, 1);
    // Concurrent batches of one stream are serialised: whichever lands last sees the other.
    let (a, b) = (batch(stream, &[9, 10], None), batch(stream, &[7, 8], None));
    let (a, b) = tokio::join!(store.ingest(&a), store.ingest(&b));
    assert_eq!(a.unwrap().acked_seq.max(b.unwrap().acked_seq), Some(10));
}

async fn gaps_count_as_stored(store: SinkBackend) {
    let stream = Uuid::new_v4();
    put(&store, stream, &[1, 2], None).await;
    assert_eq!(put(&store, stream, &[6, 7], Some((3, 5))).await, Some(7));
    // A gap alone moves the acked seq onto a seq with no event: no id.
    let ack = store.ingest(&batch(stream, &[], Some((8, 9)))).await;
    assert_eq!(pair(ack.unwrap()), (Some(9), None));
    // Gaps ahead of the acked seq are kept, merged with what they touch, and used later.
    assert_eq!(put(&store, stream, &[], Some((12, 14))).await, Some(9));
    assert_eq!(put(&store, stream, &[16], Some((13, 15))).await, Some(9));
    assert_eq!(put(&store, stream, &[10, 11], None).await, Some(16));
    // A gap at or below the acked seq changes nothing.
    assert_eq!(put(&store, stream, &[7], Some((1, 6))).await, Some(16));
    let gaps = [gap_of(3, 5), gap_of(8, 9), gap_of(12, 15)];
    assert_eq!(store.gaps("gw-01", stream).await.unwrap(), gaps);
    assert_eq!(seqs(&store, stream).await, [1, 2, 6, 7, 10, 11, 16]);
    // A gap inside one already stored, and one bridging two stored gaps, merge into one.
    assert_eq!(put(&store, stream, &[], Some((20, 22))).await, Some(16));
    assert_eq!(put(&store, stream, &[], Some((21, 21))).await, Some(16));
    assert_eq!(put(&store, stream, &[], Some((25, 26))).await, Some(16));
    assert_eq!(put(&store, stream, &[], Some((23, 24))).await, Some(16));
    let gaps = &store.gaps("gw-01", stream).await.unwrap()[3..];
    assert_eq!(gaps, [gap_of(20, 26)]);
}

async fn invalid_batch_stores_nothing(store: SinkBackend) {
    let stream = Uuid::new_v4();
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
    assert!(store.streams().await.unwrap().is_empty());
    assert!(seqs(&store, stream).await.is_empty());
    assert_eq!(store.stats(), SinkStats::default());
}

async fn a_batch_overlapping_stored_runs_stores_only_the_holes(store: SinkBackend) {
    let stream = Uuid::new_v4();
    // Runs 3..=4 and 8..=9 ahead of the acked seq, then one batch across both.
    assert_eq!(put(&store, stream, &[3, 4], None).await, None);
    assert_eq!(put(&store, stream, &[8, 9], None).await, None);
    let kept = store.events("gw-01", stream).await.unwrap();
    let across = batch(stream, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], None);
    let ack = store.ingest(&across).await.unwrap();
    assert_eq!(pair(ack), (Some(10), Some(across.events[9].id)));
    assert_eq!(store.stats().duplicates_ignored, 4);
    let events = store.events("gw-01", stream).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    // What was stored first stays (the resent 3, 4, 8, 9 carry other ids here).
    assert_eq!(events[2], kept[0]);
    assert_eq!(events[8], kept[3]);
}

async fn a_gap_over_an_event_stored_ahead_ends_the_acked_seq_without_id(store: SinkBackend) {
    let stream = Uuid::new_v4();
    // Event 5 arrives ahead; then a gap 3..=6 (the gateway dropped them after all).
    assert_eq!(put(&store, stream, &[1, 2], None).await, Some(2));
    assert_eq!(put(&store, stream, &[5], None).await, Some(2));
    let ack = store
        .ingest(&batch(stream, &[7], Some((3, 6))))
        .await
        .unwrap();
    assert_eq!(ack.acked_seq, Some(7));
    let ack = store
        .ingest(&batch(stream, &[], Some((8, 9))))
        .await
        .unwrap();
    assert_eq!(pair(ack), (Some(9), None));
    assert_eq!(seqs(&store, stream).await, [1, 2, 5, 7]);
}

/// With several batches in flight a relay can report as dropped seqs that already arrived
/// (it dropped them locally while their answer was lost): the recorded gap leaves them out.
async fn a_gap_over_stored_events_is_recorded_without_them(store: SinkBackend) {
    let stream = Uuid::new_v4();
    assert_eq!(put(&store, stream, &[4, 5], None).await, None);
    assert_eq!(put(&store, stream, &[9], None).await, None);
    assert_eq!(put(&store, stream, &[12], Some((1, 11))).await, Some(12));
    let gaps = [gap_of(1, 3), gap_of(6, 8), gap_of(10, 11)];
    assert_eq!(store.gaps("gw-01", stream).await.unwrap(), gaps);
    assert_eq!(seqs(&store, stream).await, [4, 5, 9, 12]);
    // A gap wholly over stored events records nothing.
    let other = Uuid::new_v4();
    put(&store, other, &[3, 4], None).await;
    assert_eq!(put(&store, other, &[], Some((3, 4))).await, None);
    assert!(store.gaps("gw-01", other).await.unwrap().is_empty());
}
