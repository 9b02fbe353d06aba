use super::*;
use crate::config::Overflow;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn config(max_bytes: u64, overflow: Overflow) -> OutboxConfig {
    OutboxConfig {
        max_bytes,
        overflow,
        cache_bytes: 1 << 20,
        id_retention: 10,
        min_free_bytes: 0,
        compact_min_bytes: 0,
        commit_delay_max: std::time::Duration::ZERO,
    }
}

fn ev(source: &str, id: Option<Uuid>) -> NewEvent {
    NewEvent {
        id,
        source: source.into(),
        kind: "sensor".into(),
        time: None,
        data: json!({"v": source}),
    }
}

async fn open(
    dir: &Path,
    c: OutboxConfig,
) -> (Outbox, CancellationToken, tokio::task::JoinHandle<()>) {
    let (outbox, writer) = Outbox::open(dir, c).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    (outbox, stop, task)
}

fn seqs(a: &Appended) -> Vec<u64> {
    a.assigned.iter().map(|(s, _)| *s).collect()
}

#[tokio::test]
async fn assigns_seqs_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, stop, task) = open(dir.path(), config(1 << 30, Overflow::Reject)).await;
    let stream = outbox.stats().stream;
    let a = outbox
        .append(vec![ev("a", None), ev("b", None)])
        .await
        .unwrap();
    assert_eq!(seqs(&a), [1, 2]);
    let b = outbox.append(vec![ev("c", None)]).await.unwrap();
    assert_eq!(seqs(&b), [3]);
    stop.cancel();
    task.await.unwrap();
    drop(outbox);

    let (outbox, stop, task) = open(dir.path(), config(1 << 30, Overflow::Reject)).await;
    let stats = outbox.stats();
    assert_eq!(
        (stats.stream, stats.next_seq, stats.backlog_events),
        (stream, 4, 3)
    );
    let batch = outbox.batch_after(0, 10, 1 << 20).unwrap();
    let got: Vec<_> = batch.iter().map(|e| (e.seq, e.source.as_str())).collect();
    assert_eq!(got, [(1, "a"), (2, "b"), (3, "c")]);
    assert_eq!(batch[0].id, a.assigned[0].1);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn repeated_id_returns_the_original_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _stop, _task) = open(dir.path(), config(1 << 30, Overflow::Reject)).await;
    let id = Uuid::now_v7();
    let first = outbox.append(vec![ev("a", Some(id))]).await.unwrap();
    let again = outbox
        .append(vec![ev("b", None), ev("a", Some(id)), ev("a", Some(id))])
        .await
        .unwrap();
    assert_eq!(seqs(&first), [1]);
    assert_eq!(seqs(&again), [2, 1, 1]);
    assert_eq!(outbox.stats().backlog_events, 2);
    // Still known after delivery, within the retention window.
    outbox.mark_sent(2).await.unwrap();
    outbox.ack(2).await.unwrap();
    let after = outbox.append(vec![ev("a", Some(id))]).await.unwrap();
    assert_eq!(seqs(&after), [1]);
}

#[tokio::test]
async fn ack_deletes_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _stop, _task) = open(dir.path(), config(1 << 30, Overflow::Reject)).await;
    let events: Vec<_> = (0..10).map(|i| ev(&format!("s{i}"), None)).collect();
    outbox.append(events).await.unwrap();
    let before = outbox.stats();
    outbox.mark_sent(4).await.unwrap();
    outbox.ack(4).await.unwrap();
    outbox.mark_sent(2).await.unwrap();
    outbox.ack(2).await.unwrap(); // going back is a no-op
    let stats = outbox.stats();
    assert_eq!((stats.acked_seq, stats.backlog_events), (4, 6));
    // The ten events share one chunk: its bytes go when its last event is acknowledged.
    assert_eq!(stats.backlog_bytes, before.backlog_bytes);
    let rest = outbox.batch_after(0, 100, 1 << 20).unwrap();
    assert_eq!(rest.first().map(|e| e.seq), Some(5));
    outbox.mark_sent(10).await.unwrap();
    outbox.ack(10).await.unwrap();
    let stats = outbox.stats();
    assert_eq!((stats.backlog_events, stats.backlog_bytes), (0, 0));
    // Acks past the end are clamped.
    outbox.mark_sent(99).await.unwrap();
    outbox.ack(99).await.unwrap();
    assert_eq!(outbox.stats().acked_seq, 10);
}

#[tokio::test]
async fn batch_respects_event_and_byte_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _stop, _task) = open(dir.path(), config(1 << 30, Overflow::Reject)).await;
    outbox
        .append((0..20).map(|i| ev(&format!("s{i}"), None)).collect())
        .await
        .unwrap();
    assert_eq!(outbox.batch_after(0, 7, 1 << 20).unwrap().len(), 7);
    let one = serde_json::to_vec(&outbox.batch_after(0, 1, 1 << 20).unwrap()[0])
        .unwrap()
        .len();
    assert_eq!(outbox.batch_after(0, 100, one * 3).unwrap().len(), 3);
    assert_eq!(
        outbox.batch_after(0, 100, 1).unwrap().len(),
        1,
        "one event always goes"
    );
    assert_eq!(outbox.batch_after(15, 100, 1 << 20).unwrap()[0].seq, 16);
    assert!(outbox.batch_after(20, 100, 1 << 20).unwrap().is_empty());
}

#[tokio::test]
async fn reject_policy_refuses_and_keeps_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _stop, _task) = open(dir.path(), config(2_000, Overflow::Reject)).await;
    let mut accepted = 0;
    let err = loop {
        match outbox.append(vec![ev("x", None)]).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, OutboxError::Full { .. }), "{err}");
    assert!(accepted > 5);
    let stats = outbox.stats();
    assert_eq!(stats.backlog_events, accepted);
    assert_eq!(stats.dropped_events, 0);
    assert_eq!(
        outbox.batch_after(0, 1000, 1 << 20).unwrap().len() as u64,
        accepted
    );
    // Room again after an ack.
    outbox.mark_sent(1).await.unwrap();
    outbox.ack(1).await.unwrap();
    outbox.append(vec![ev("y", None)]).await.unwrap();
}

#[tokio::test]
async fn drop_oldest_deletes_from_the_front_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _stop, _task) = open(dir.path(), config(2_000, Overflow::DropOldest)).await;
    for i in 0..100 {
        outbox
            .append(vec![ev(&format!("s{i}"), None)])
            .await
            .unwrap();
    }
    let stats = outbox.stats();
    assert!(stats.dropped_events > 0);
    assert!(stats.backlog_bytes <= 2_000);
    assert_eq!(stats.dropped_events + stats.backlog_events, 100);
    let rest = outbox.batch_after(0, 1000, 1 << 20).unwrap();
    assert_eq!(
        rest[0].seq,
        stats.dropped_events + 1,
        "the oldest went first"
    );
    assert_eq!(rest.last().unwrap().seq, 100);
    // One request larger than the whole buffer is refused even under drop_oldest.
    let huge: Vec<_> = (0..200).map(|i| ev(&format!("h{i}"), None)).collect();
    assert!(matches!(
        outbox.append(huge).await,
        Err(OutboxError::Full { .. })
    ));
}

#[tokio::test]
async fn closed_writer_refuses_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, stop, task) = open(dir.path(), config(1 << 30, Overflow::Reject)).await;
    stop.cancel();
    task.await.unwrap();
    assert!(matches!(
        outbox.append(vec![ev("a", None)]).await,
        Err(OutboxError::Closed)
    ));
}

/// Regression: the relay took its events and its gap from two reads of the durable end, so an
/// append committed in between (the writer runs on another worker thread) was reported as a
/// dropped gap and skipped, even under `reject`. Both now come from one durable end.
#[tokio::test]
async fn a_commit_after_the_snapshot_is_not_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _stop, _task) = open(dir.path(), config(1 << 30, Overflow::Reject)).await;
    outbox
        .append(vec![ev("a", None), ev("b", None)])
        .await
        .unwrap();
    let snapshot = outbox.stats();
    // Committed after the relay read the durable end: not part of this delivery at all.
    outbox.append(vec![ev("c", None)]).await.unwrap();
    let d = outbox.delivery_before(2, snapshot, 10, 1 << 20).unwrap();
    assert_eq!(d, Delivery::default());
    let d = outbox.next_delivery(2, 10, 1 << 20).unwrap();
    assert_eq!((d.count, d.last_seq, d.gap), (1, Some(3), None));
    let event: Event = serde_json::from_slice(&d.ndjson).unwrap();
    assert_eq!(event.seq, 3);
}

#[tokio::test]
async fn delivery_reports_dropped_seqs_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _stop, _task) = open(dir.path(), config(2_000, Overflow::DropOldest)).await;
    for i in 0..40 {
        outbox
            .append(vec![ev(&format!("s{i}"), None)])
            .await
            .unwrap();
    }
    let dropped = outbox.stats().dropped_events;
    assert!(dropped > 0);
    let d = outbox.next_delivery(0, 5, 1 << 20).unwrap();
    let gap = Gap {
        dropped_from: 1,
        dropped_to: dropped,
    };
    assert_eq!((d.gap, d.count), (Some(gap), 5));
    let first = d.ndjson.split(|&b| b == b'\n').next().unwrap();
    let first: Event = serde_json::from_slice(first).unwrap();
    assert_eq!(first.seq, dropped + 1);
    assert_eq!(d.last_seq, Some(dropped + 5));
    // Everything after the acked seq dropped: the gap alone, up to the durable end.
    outbox.mark_sent(40).await.unwrap();
    outbox.ack(40).await.unwrap();
    let d = outbox.next_delivery(38, 5, 1 << 20).unwrap();
    assert_eq!((d.count, d.gap.map(|g| g.dropped_to)), (0, Some(40)));
    assert!(d.ndjson.is_empty());
}

/// `len` hex digits that zstd cannot shrink much, different for each `seed`.
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect()
}

/// Seqs of the stored events after `acked`.
fn seqs_after(outbox: &Outbox, acked: u64) -> Vec<u64> {
    let events = outbox.batch_after(acked, 10_000, 1 << 30).unwrap();
    events.iter().map(|e| e.seq).collect()
}

/// Entries and file names directly in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_drained_store_is_compacted_into_a_fresh_one_and_keeps_its_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(1 << 30, Overflow::Reject);
    c.compact_min_bytes = 1 << 20;
    let (outbox, stop, task) = open(dir.path(), c.clone()).await;
    let stream = outbox.stats().stream;
    let remembered = Uuid::now_v7();
    let mut last = 0;
    for round in 0..40 {
        let events: Vec<_> = (0..100)
            .map(|i| {
                let id = (round == 39 && i == 99).then_some(remembered);
                ev(&noise(round * 100 + i, 1000), id)
            })
            .collect();
        last = *seqs(&outbox.append(events).await.unwrap()).last().unwrap();
    }
    assert_eq!(last, 4000);
    let filled = crate::outbox::store_bytes(dir.path());
    assert!(
        filled > 2 << 20,
        "{filled} bytes: the test needs a store over the minimum"
    );
    // Everything but the last 5 events delivered: the backlog is small, the store large.
    outbox.mark_sent(4000).await.unwrap();
    outbox.ack(3995).await.unwrap();
    // The writer compacts after answering the ack; the next command waits for it.
    outbox.ack(3995).await.unwrap();
    let stats = outbox.stats();
    assert_eq!(stats.compactions, 1, "{stats:?}");
    assert_eq!(
        (
            stats.stream,
            stats.next_seq,
            stats.acked_seq,
            stats.backlog_events
        ),
        (stream, 4001, 3995, 5)
    );
    assert_eq!(names(dir.path()), ["CURRENT", "store-1"]);
    let compacted = crate::outbox::store_bytes(dir.path());
    assert!(
        compacted < filled / 2,
        "{compacted} bytes after, {filled} before"
    );
    // The backlog, the remembered id and the counters came along.
    let rest = seqs_after(&outbox, 3995);
    assert_eq!(rest, [3996, 3997, 3998, 3999, 4000]);
    let again = outbox
        .append(vec![
            ev(&noise(3999, 1000), Some(remembered)),
            ev("new", None),
        ])
        .await
        .unwrap();
    assert_eq!(seqs(&again), [4000, 4001]);
    stop.cancel();
    task.await.unwrap();
    drop(outbox);

    let (outbox, stop, task) = open(dir.path(), c).await;
    let stats = outbox.stats();
    assert_eq!(
        (
            stats.stream,
            stats.next_seq,
            stats.backlog_events,
            stats.compactions
        ),
        (stream, 4002, 6, 0)
    );
    let rest = seqs_after(&outbox, 3995);
    assert_eq!(rest, [3996, 3997, 3998, 3999, 4000, 4001]);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn no_compaction_while_the_backlog_is_large_or_when_turned_off() {
    for (min_bytes, acked) in [(1 << 20, 1000), (0, 4000)] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(1 << 30, Overflow::Reject);
        c.compact_min_bytes = min_bytes;
        let (outbox, _stop, _task) = open(dir.path(), c).await;
        for round in 0..40 {
            let events: Vec<_> = (0..100)
                .map(|i| ev(&noise(round * 100 + i, 1000), None))
                .collect();
            outbox.append(events).await.unwrap();
        }
        outbox.mark_sent(4000).await.unwrap();
        outbox.ack(acked).await.unwrap();
        outbox.ack(acked).await.unwrap();
        assert!(outbox.stats().backlog_bytes > 0 || min_bytes == 0);
        assert_eq!(
            outbox.stats().compactions,
            0,
            "min {min_bytes}, acked {acked}"
        );
        assert!(names(dir.path()).contains(&"db".to_owned()));
    }
}

/// Closed-loop producers under the longest commit delay: every append is answered once, the
/// seqs are dense and each producer's stay in its order; when all but one stop, the one left
/// is still answered (the delay expects only what comes, it is never wedged waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_under_the_commit_delay_get_dense_seqs_in_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(1 << 30, Overflow::Reject);
    c.commit_delay_max = std::time::Duration::from_millis(100);
    let (outbox, stop, task) = open(dir.path(), c).await;
    let producers: Vec<_> = (0..16)
        .map(|p| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for k in 0..25 {
                    let source = format!("p{p}-{k}");
                    let a = outbox.append(vec![ev(&source, None)]).await.unwrap();
                    answers.push((seqs(&a)[0], source));
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for p in producers {
        let mine = p.await.unwrap();
        assert!(mine.windows(2).all(|w| w[0].0 < w[1].0), "{mine:?}");
        answers.extend(mine);
    }
    for k in 0..20 {
        let a = outbox
            .append(vec![ev(&format!("alone-{k}"), None)])
            .await
            .unwrap();
        answers.push((seqs(&a)[0], format!("alone-{k}")));
    }
    answers.sort();
    let expected: Vec<u64> = (1..=420).collect();
    assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), expected);
    let stored = outbox.batch_after(0, 1000, usize::MAX).unwrap();
    let stored: Vec<(u64, String)> = stored.into_iter().map(|e| (e.seq, e.source)).collect();
    assert_eq!(stored, answers);
    stop.cancel();
    task.await.unwrap();
}
