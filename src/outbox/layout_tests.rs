//! Tests of the chunk layout: no blobs, rollback, stale ids, pruning, layout-1 migration.

use std::path::Path;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::keys::{CHUNK, ID, ID_BY_SEQ, be_u64, id_by_seq_key, id_key, meta_key};
use super::*;
use crate::config::Overflow;
use crate::event::NewEvent;

fn config(id_retention: u64, max_bytes: u64, overflow: Overflow) -> OutboxConfig {
    OutboxConfig {
        max_bytes,
        overflow,
        cache_bytes: 1 << 20,
        id_retention,
        min_free_bytes: 0,
        compact_min_bytes: 0,
        commit_delay_max: std::time::Duration::ZERO,
    }
}

fn ev(n: usize, id: Option<Uuid>, data_bytes: usize) -> NewEvent {
    NewEvent {
        id,
        source: format!("s{n}"),
        kind: "sensor".into(),
        time: None,
        data: json!({ "n": n, "pad": "x".repeat(data_bytes) }),
    }
}

struct Running {
    outbox: Outbox,
    stop: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
}

fn open(dir: &Path, c: OutboxConfig) -> Running {
    let (outbox, writer) = Outbox::open(dir, c).unwrap();
    let stop = CancellationToken::new();
    let writer = tokio::spawn(writer.run(stop.clone()));
    Running {
        outbox,
        stop,
        writer,
    }
}

/// Stops the outbox and opens its raw tree (sled locks the dir until every handle is gone).
async fn raw(running: Running, dir: &Path) -> (sled::Db, sled::Tree) {
    running.stop.cancel();
    running.writer.await.unwrap();
    drop(running.outbox);
    let (db, _) = crate::durable::open(dir, 1 << 20).unwrap();
    let tree = db.open_tree("outbox").unwrap();
    (db, tree)
}

/// Commits two events (seqs 1 and 2), stops the outbox and opens its raw tree.
async fn two_events_then_raw(dir: &Path) -> (sled::Db, sled::Tree) {
    let running = open(dir, config(100, 1 << 30, Overflow::Reject));
    running
        .outbox
        .append(vec![ev(1, None, 10), ev(2, None, 10)])
        .await
        .unwrap();
    raw(running, dir).await
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs")).map_or(0, Iterator::count)
}

#[tokio::test]
async fn events_of_any_size_never_make_sled_write_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let running = open(dir.path(), config(100, 1 << 30, Overflow::Reject));
    let outbox = &running.outbox;
    // 100 B to 64 KiB, in requests of up to 40 events (several chunks per group).
    let sizes = [100, 10_000, 20_000, 64 * 1024 - 64, 3_000, 40_000];
    let mut sent = 0;
    for round in 0..12 {
        let n = 1 + round * 3;
        let events = (0..n)
            .map(|i| ev(sent + i, None, sizes[(sent + i) % sizes.len()]))
            .collect();
        outbox.append(events).await.unwrap();
        sent += n;
        if round % 4 == 3 {
            outbox.mark_sent(sent as u64 / 2).await.unwrap();
            outbox.ack(sent as u64 / 2).await.unwrap();
        }
    }
    let batch = outbox.batch_after(0, 10_000, usize::MAX).unwrap();
    let first = outbox.stats().acked_seq + 1;
    assert_eq!(batch.len() as u64, sent as u64 - first + 1);
    for (event, seq) in batch.iter().zip(first..) {
        assert_eq!(event.seq, seq);
        assert_eq!(event.source, format!("s{}", seq - 1));
        assert_eq!(
            event.data["pad"].as_str().unwrap().len(),
            sizes[(seq as usize - 1) % 6]
        );
    }
    assert_eq!(blob_files(dir.path()), 0, "sled wrote a blob file");
    // Negative control: a value over sled's blob threshold does become a blob here.
    let (_db, tree) = raw(running, dir.path()).await;
    tree.insert(b"zz-control", vec![0u8; 200 * 1024]).unwrap();
    tree.flush().unwrap();
    assert!(blob_files(dir.path()) > 0);
}

#[tokio::test]
async fn a_group_cut_by_a_crash_is_rolled_back_with_its_ids_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (db, tree) = two_events_then_raw(dir.path()).await;
    // The first chunk of an unanswered group: seqs 3 and 4 and their ids, without counters.
    let lost = Uuid::new_v4();
    let mut builder = chunk::Builder::new(3);
    let mut batch = sled::Batch::default();
    for (seq, id) in [(3u64, lost), (4, Uuid::new_v4())] {
        let event = ev(0, None, 10).commit(seq, id, "2026-11-21T05:00:00Z");
        builder.push(&serde_json::to_vec(&event).unwrap());
        batch.insert(&id_key(&id)[..], &seq.to_be_bytes()[..]);
        batch.insert(&id_by_seq_key(seq)[..], id.as_bytes());
    }
    chunk::put(&mut batch, 3, &builder.encode());
    tree.apply_batch(batch).unwrap();
    tree.flush().unwrap();
    drop((tree, db));

    let running = open(dir.path(), config(100, 1 << 30, Overflow::Reject));
    let outbox = &running.outbox;
    assert_eq!(outbox.stats().next_seq, 3);
    assert_eq!(outbox.batch_after(0, 10, 1 << 20).unwrap().len(), 2);
    // The producer retries with its id: it is stored, not answered with a seq never kept.
    let retried = outbox.append(vec![ev(3, Some(lost), 10)]).await.unwrap();
    assert_eq!(retried.assigned, [(3, lost)]);
    let batch = outbox.batch_after(2, 10, 1 << 20).unwrap();
    assert_eq!((batch.len(), batch[0].source.as_str()), (1, "s3"));
    assert_eq!(outbox.stats().backlog_events, 3);
}

#[tokio::test]
async fn an_id_entry_naming_another_event_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (db, tree) = two_events_then_raw(dir.path()).await;
    // An index entry that survived while its event did not (the failure issue 9 reports):
    // it points at seq 2, which holds another event.
    let stale = Uuid::new_v4();
    tree.insert(id_key(&stale), &2u64.to_be_bytes()).unwrap();
    tree.flush().unwrap();
    drop((tree, db));

    let running = open(dir.path(), config(100, 1 << 30, Overflow::Reject));
    let answer = running
        .outbox
        .append(vec![ev(3, Some(stale), 10)])
        .await
        .unwrap();
    assert_eq!(
        answer.assigned,
        [(3, stale)],
        "stored anew, not answered with seq 2"
    );
}

#[tokio::test]
async fn only_producer_ids_are_indexed_and_they_are_forgotten_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let running = open(dir.path(), config(100, 1 << 30, Overflow::Reject));
    let outbox = &running.outbox;
    let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
    let events = ids.iter().enumerate().map(|(n, id)| ev(n, Some(*id), 10));
    outbox.append(events.collect()).await.unwrap();
    outbox.append(vec![ev(0, None, 10)]).await.unwrap();
    outbox.mark_sent(1001).await.unwrap();
    outbox.ack(1001).await.unwrap();
    let stats = outbox.stats();
    assert_eq!((stats.backlog_events, stats.backlog_bytes), (0, 0));
    // Within the retention window an id still answers with its seq; before it, it is new.
    let again = outbox
        .append(vec![ev(950, Some(ids[950]), 10), ev(1, Some(ids[10]), 10)])
        .await
        .unwrap();
    assert_eq!(again.assigned, [(951, ids[950]), (1002, ids[10])]);

    let (_db, tree) = raw(running, dir.path()).await;
    let indexed = tree.scan_prefix([ID]).count();
    // Seqs 902..=1000 (ids within 100 of the acked seq 1001) and 1002; none for seq 1001.
    assert_eq!(indexed, 99 + 1, "{indexed} ids");
    assert_eq!(tree.scan_prefix([ID_BY_SEQ]).count(), indexed);
}

#[tokio::test]
async fn drop_oldest_drops_whole_chunks_and_reports_exactly_their_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let running = open(dir.path(), config(100, 60_000, Overflow::DropOldest));
    let outbox = &running.outbox;
    for i in 0..30 {
        outbox.append(vec![ev(i, None, 5_000)]).await.unwrap();
    }
    let stats = outbox.stats();
    assert!(stats.backlog_bytes <= 60_000);
    let d = outbox.next_delivery(0, 100, usize::MAX).unwrap();
    let gap = d.gap.expect("a gap");
    assert_eq!(gap.dropped_from, 1);
    assert_eq!(gap.dropped_to, stats.dropped_events);
    let first = d.ndjson.split(|&b| b == b'\n').next().unwrap();
    let first: Event = serde_json::from_slice(first).unwrap();
    assert_eq!(first.seq, stats.dropped_events + 1);
    assert_eq!(d.count as u64, stats.backlog_events);
    assert_eq!(d.last_seq, Some(30));
}

#[tokio::test]
async fn a_layout_1_store_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let stream = Uuid::new_v4();
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    {
        let (db, _) = crate::durable::open(dir.path(), 1 << 20).unwrap();
        let tree = db.open_tree("outbox").unwrap();
        // Layout 1: seqs 1..=2 acked (ids retired), 3..=5 buffered, 6 past next_seq (a cut).
        tree.insert(meta_key("stream"), stream.as_bytes()).unwrap();
        for (name, v) in [
            ("next_seq", 6u64),
            ("acked_seq", 2),
            ("backlog_events", 3),
            ("backlog_bytes", 999),
            ("dropped_events", 0),
        ] {
            tree.insert(meta_key(name), &v.to_be_bytes()).unwrap();
        }
        for (n, id) in ids.iter().enumerate() {
            let seq = n as u64 + 1;
            tree.insert(id_key(id), &seq.to_be_bytes()).unwrap();
            if seq >= 3 {
                let event = ev(n, None, 10).commit(seq, *id, "2026-11-21T05:00:00Z");
                let mut key = vec![b'e'];
                key.extend_from_slice(&seq.to_be_bytes());
                tree.insert(key, serde_json::to_vec(&event).unwrap())
                    .unwrap();
            }
        }
        let mut key = vec![b'r'];
        key.extend_from_slice(&2u64.to_be_bytes());
        tree.insert(
            key,
            [ids[0].as_bytes().as_slice(), ids[1].as_bytes()].concat(),
        )
        .unwrap();
        tree.flush().unwrap();
    }
    let running = open(dir.path(), config(100, 1 << 30, Overflow::Reject));
    let outbox = &running.outbox;
    let stats = outbox.stats();
    assert_eq!(
        (stats.stream, stats.next_seq, stats.acked_seq),
        (stream, 6, 2)
    );
    let events = outbox.batch_after(2, 100, usize::MAX).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(events[0].id, ids[2]);
    // Remembered ids still answer with their seqs; seq 6's id was rolled back.
    let again = outbox
        .append(vec![ev(0, Some(ids[0]), 10), ev(0, Some(ids[5]), 10)])
        .await
        .unwrap();
    assert_eq!(again.assigned, [(1, ids[0]), (6, ids[5])]);
    let (_db, tree) = raw(running, dir.path()).await;
    assert_eq!(tree.scan_prefix([b'e']).count(), 0);
    assert_eq!(tree.scan_prefix([b'r']).count(), 0);
    // backlog_bytes, the fourth counter of the one value layout 4 keeps them in.
    let counters = tree.get(meta_key("counters")).unwrap().unwrap();
    let stats_bytes = be_u64(&counters[24..32]).unwrap();
    assert!(stats_bytes > 0 && stats_bytes != 999);
}

#[tokio::test]
async fn chunks_are_stored_compressed_and_read_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let running = open(dir.path(), config(100, 1 << 30, Overflow::Reject));
    let outbox = &running.outbox;
    let batch: Vec<NewEvent> = (0..200).map(|n| ev(n, None, 150)).collect();
    outbox.append(batch).await.unwrap();
    let events = outbox.batch_after(0, 1000, usize::MAX).unwrap();
    assert_eq!(events.len(), 200);
    for (n, e) in events.iter().enumerate() {
        assert_eq!(e.seq, n as u64 + 1);
        assert_eq!(e.data, json!({ "n": n, "pad": "x".repeat(150) }));
    }
    let plain: usize = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len() + 1)
        .sum();
    let (_db, tree) = raw(running, dir.path()).await;
    let pieces: Vec<sled::IVec> = tree
        .scan_prefix([CHUNK])
        .values()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(pieces[0][0], 2, "the first chunk is in the zstd encoding");
    let stored: usize = pieces.iter().map(|p| p.len()).sum();
    assert!(
        stored * 3 < plain,
        "{stored} B stored for {plain} B of events"
    );
}

#[tokio::test]
async fn a_layout_2_store_of_plain_chunks_reads_unchanged_and_a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stream = Uuid::new_v4();
    let body: Vec<u8> = [1u64, 2]
        .iter()
        .map(|&seq| {
            let event =
                ev(seq as usize, None, 10).commit(seq, Uuid::new_v4(), "2026-11-21T05:00:00Z");
            serde_json::to_vec(&event).unwrap()
        })
        .collect::<Vec<_>>()
        .join(&b'\n');
    {
        let (db, _) = crate::durable::open(dir.path(), 1 << 20).unwrap();
        let tree = db.open_tree("outbox").unwrap();
        tree.insert(meta_key("stream"), stream.as_bytes()).unwrap();
        for (name, v) in [("layout", 2u64), ("next_seq", 3), ("backlog_events", 2)] {
            tree.insert(meta_key(name), &v.to_be_bytes()).unwrap();
        }
        // A plain chunk, as layout 2 wrote them: version 1, count, body_len, body.
        let mut plain = vec![1u8];
        plain.extend_from_slice(&2u32.to_be_bytes());
        plain.extend_from_slice(&(body.len() as u32).to_be_bytes());
        plain.extend_from_slice(&body);
        let mut batch = sled::Batch::default();
        chunk::put(&mut batch, 1, &plain);
        tree.apply_batch(batch).unwrap();
        tree.flush().unwrap();
    }
    let running = open(dir.path(), config(100, 1 << 30, Overflow::Reject));
    let events = running.outbox.batch_after(0, 10, usize::MAX).unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.seq, e.source.as_str()))
            .collect::<Vec<_>>(),
        [(1, "s1"), (2, "s2")]
    );
    let (_db, tree) = raw(running, dir.path()).await;
    let layout = tree
        .get(meta_key("layout"))
        .unwrap()
        .and_then(|v| be_u64(&v));
    assert_eq!(layout, Some(4));
    // The counters moved into one value; their keys of layouts 1-3 are gone.
    for name in ["next_seq", "backlog_events"] {
        assert_eq!(tree.get(meta_key(name)).unwrap(), None, "{name}");
    }
    let counters = tree.get(meta_key("counters")).unwrap().unwrap();
    assert_eq!(counters.len(), 48);
    assert_eq!(be_u64(&counters[..8]), Some(3), "next_seq");
    tree.insert(meta_key("layout"), &5u64.to_be_bytes())
        .unwrap();
    tree.flush().unwrap();
    drop((_db, tree));
    let refused = Outbox::open(dir.path(), config(100, 1 << 30, Overflow::Reject))
        .err()
        .expect("a layout-5 store is refused");
    assert!(refused.is_unopenable(), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("layout 5 was written by a newer edge-relay"),
        "{refused}"
    );
}

/// A damaged counter is damage, never "absent": a `next_seq` read as absent would restart at 1
/// and answer producers with seqs already answered for other events.
#[tokio::test]
async fn a_damaged_counter_makes_the_store_unopenable_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (db, tree) = two_events_then_raw(dir.path()).await;
    tree.insert(meta_key("counters"), &[0u8, 3][..]).unwrap();
    db.flush().unwrap();
    drop((tree, db));
    let Err(err) = Outbox::open(dir.path(), config(100, 1 << 30, Overflow::Reject)) else {
        panic!("a store with a 2-byte next_seq opened");
    };
    assert!(err.is_unopenable(), "{err}");
    assert_eq!(
        err.to_string(),
        "corrupt outbox record at seq 0: counters are 2 bytes, not 48"
    );
}

#[tokio::test]
async fn a_group_of_large_events_is_stored_whole() {
    use rand::RngExt as _;
    let dir = tempfile::tempdir().unwrap();
    let running = open(dir.path(), config(100, 1 << 30, Overflow::Reject));
    // 12 events of ~60 KiB that barely compress, with producer ids: one request, one group of
    // hundreds of sled inserts.
    let mut rng = rand::rng();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let events: Vec<NewEvent> = (0..12)
        .map(|n| {
            let pad: String = (0..60_000)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
                .collect();
            NewEvent {
                data: json!({ "n": n, "pad": pad }),
                ..ev(n, Some(Uuid::new_v4()), 0)
            }
        })
        .collect();
    let assigned = running
        .outbox
        .append(events.clone())
        .await
        .unwrap()
        .assigned;
    assert_eq!(
        assigned.iter().map(|a| a.0).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    let (db, tree) = raw(running, dir.path()).await;
    let stored: usize = tree
        .scan_prefix([CHUNK])
        .map(|kv| kv.unwrap().1.len())
        .sum();
    assert!(stored > 12 * 40_000, "{stored} chunk bytes");
    drop((tree, db));

    let running = open(dir.path(), config(100, 1 << 30, Overflow::Reject));
    let outbox = &running.outbox;
    assert_eq!(outbox.stats().next_seq, 13);
    assert_eq!(outbox.stats().backlog_events, 12);
    let batch = outbox.batch_after(0, 100, usize::MAX).unwrap();
    assert_eq!(batch.len(), 12);
    for ((event, sent), (seq, id)) in batch.iter().zip(&events).zip(&assigned) {
        assert_eq!((event.seq, event.id, &event.data), (*seq, *id, &sent.data));
    }
    // Every id was indexed: a retry gets the same seqs.
    let retried = outbox.append(events).await.unwrap();
    assert_eq!(retried.assigned, assigned);
    assert_eq!(outbox.stats().next_seq, 13);
}
