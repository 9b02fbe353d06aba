//! The sink's PostgreSQL store against a real PostgreSQL (tests/support/postgres.rs): the
//! contract cases the sled store passes, two nodes on one database, a database restart.

use edge_relay_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use edge_relay::sink::{PgStore, SinkBackend, SinkError};
use support::contract_cases;
use support::postgres::Postgres;
use uuid::Uuid;

use contract_cases::batch;

async fn node(url: &str) -> SinkBackend {
    Arc::new(PgStore::connect(url).await.expect("connect the sink store")).into()
}

#[tokio::test]
async fn the_contract_cases_pass_on_postgres() {
    let pg = Postgres::start();
    let n = AtomicUsize::new(0);
    contract_cases::run_all(|| async {
        let url = pg
            .create_db(&format!("case{}", n.fetch_add(1, Ordering::Relaxed)))
            .await;
        node(&url).await
    })
    .await;
}

/// Two nodes on one database, batches of one stream racing through both: every seq stored
/// once, the acked seq right; then a node started later migrates nothing and sees it all.
#[tokio::test]
async fn two_nodes_on_one_database_stay_exactly_once() {
    let pg = Postgres::start();
    let url = pg.create_db("fleet").await;
    let (a, b) = tokio::join!(node(&url), node(&url));
    let stream = Uuid::new_v4();
    // Each batch of 20 seqs is sent through both nodes at once, twice, in reverse order too.
    let batches: Vec<_> = (0..25u64)
        .map(|i| {
            batch(
                stream,
                &(i * 20 + 1..=i * 20 + 20).collect::<Vec<_>>(),
                None,
            )
        })
        .collect();
    let mut calls = Vec::new();
    for args in batches.iter().chain(batches.iter().rev()) {
        for store in [&a, &b] {
            let (store, args) = (store.clone(), args.clone());
            calls.push(tokio::spawn(async move { store.ingest(&args).await }));
        }
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let ack = a.cursor("gw-01", stream).await.unwrap();
    assert_eq!(ack.acked_seq, Some(500));
    let events = b.events("gw-01", stream).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>()
    );
    // Each seq's stored event is one of the two sent (the first to commit), and the acked seq's id is it.
    assert_eq!(ack.acked_id, Some(events[499].id));
    let stored = a.stats().events_stored + b.stats().events_stored;
    assert_eq!(stored, 500, "every event inserted by exactly one node");
    let late = node(&url).await;
    assert_eq!(late.cursor("gw-01", stream).await.unwrap(), ack);
}

/// A database crash (`pg_ctl stop -m immediate`) between batches: what was acked survives,
/// ingests fail while it is down (nothing acked), and the same store works again after.
/// Negative control: an ingest while down is an error, not an ack.
#[tokio::test]
async fn acked_batches_survive_a_database_crash() {
    let pg = Postgres::start();
    let url = pg.create_db("crash").await;
    let store = node(&url).await;
    let stream = Uuid::new_v4();
    let first = batch(stream, &(1..=100).collect::<Vec<_>>(), None);
    let ack = store.ingest(&first).await.unwrap();
    assert_eq!(ack.acked_seq, Some(100));
    pg.stop_immediate();
    let down = store.ingest(&batch(stream, &[101], None)).await;
    assert!(matches!(down, Err(SinkError::Database(_))), "{down:?}");
    pg.start_again();
    // The pool's broken connections are dropped on first use; a retry gets a new one.
    let mut again = store.ingest(&batch(stream, &[101, 102], None)).await;
    for _ in 0..3 {
        if again.is_ok() {
            break;
        }
        again = store.ingest(&batch(stream, &[101, 102], None)).await;
    }
    assert_eq!(again.unwrap().acked_seq, Some(102));
    assert_eq!(
        store.events("gw-01", stream).await.unwrap()[..100],
        first.events[..]
    );
}

/// `sslmode=require` with the server's CA in `sslrootcert`: the node's connections are TLS
/// (the server's own view, `pg_stat_ssl`). Negative controls: without the CA the certificate
/// is refused; the server takes no plain TCP connection at all.
#[tokio::test]
async fn connects_over_tls_verifying_the_server() {
    let pg = Postgres::start_tls();
    pg.create_db("tls").await;
    let base = format!("{}?sslmode=require", pg.tcp_url("tls"));
    let with_ca = format!("{base}&sslrootcert={}", pg.ca_file().display());
    let store = node(&with_ca).await;
    let stream = Uuid::new_v4();
    let ack = store.ingest(&batch(stream, &[1, 2], None)).await.unwrap();
    assert_eq!(ack.acked_seq, Some(2));
    let (client, conn) = tokio_postgres::connect(&pg.url("tls"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'tls' AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let (ssl, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(ssl >= 1 && ssl == all, "{ssl} of {all} connections use TLS");

    let untrusted = PgStore::connect(&base)
        .await
        .err()
        .expect("an unknown CA is refused");
    assert!(
        format!("{untrusted}").contains("invalid peer certificate: UnknownIssuer"),
        "{untrusted}"
    );
    assert!(
        format!("{untrusted}").contains("add sslrootcert=FILE (its CA) to the URL"),
        "the error says what to do: {untrusted}"
    );
    let plain = format!("{}?sslmode=disable", pg.tcp_url("tls"));
    assert!(
        PgStore::connect(&plain).await.is_err(),
        "plain TCP is refused"
    );
}
