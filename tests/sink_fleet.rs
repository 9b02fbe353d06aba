//! A fleet on PostgreSQL, end to end with the real binary: 3 relays (`upstream.urls` listing
//! both nodes) × 2 `edge-relay sink --store postgres` nodes on one database, with each node
//! killed (-9) in turn and the database crashed (`pg_ctl stop -m immediate`) mid-stream.

use edge_relay_testkit as support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use edge_relay::daemon::Daemon;
use edge_relay::demo::audit::audit;
use edge_relay::sink::{PgStore, SinkBackend};
use support::postgres::Postgres;
use support::process::{DaemonChild, binary, child_command, free_port, poll_until, wait_listening};
use support::{WAIT, accepted, drained, event, post, relay_config, start_relay};
use uuid::Uuid;

/// Events each relay gets per round (one POST).
const ROUND: u64 = 50;

/// `edge-relay sink --listen addr --store url`, started and listening.
async fn node(addr: SocketAddr, url: &str) -> DaemonChild {
    let mut cmd: Command = child_command(binary(), "warn");
    cmd.args(["sink", "--listen", &addr.to_string(), "--store", url]);
    let child = DaemonChild(cmd.spawn().expect("spawn a sink node"));
    wait_listening(addr, "sink node").await;
    child
}

fn mcp(addr: SocketAddr) -> String {
    format!("http://{addr}/mcp")
}

/// One round: a POST of [`ROUND`] events to every relay; records what each was told.
async fn round(relays: &[Daemon], accepted_by: &mut [Vec<(u64, Uuid)>], n: u64) {
    for (relay, log) in relays.iter().zip(accepted_by.iter_mut()) {
        let body: Vec<_> = (0..ROUND).map(|k| event("ankle", n * ROUND + k)).collect();
        let (code, answer) = post(relay.ingest_addr, serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(code, 200, "{answer}");
        log.extend(accepted(&answer));
    }
}

async fn drain(relays: &[Daemon]) {
    for relay in relays {
        drained(relay).await;
    }
}

fn failovers(relays: &[Daemon]) -> Vec<u64> {
    relays
        .iter()
        .map(|r| r.status.report("-", &r.outbox.stats()).upstream_failovers)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_two_sink_nodes_survive_node_kills_and_a_database_crash() {
    let pg = Postgres::start();
    let url = pg.create_db("fleet").await;
    let (addr_a, addr_b) = (free_port(), free_port());
    let mut a = node(addr_a, &url).await;
    let mut b = node(addr_b, &url).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut relays = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut config = relay_config(dir.path(), "");
        config.gateway_id = format!("gw-{i}");
        // Relays 0 and 2 prefer node a, relay 1 node b.
        let (first, second) = if i == 1 {
            (addr_b, addr_a)
        } else {
            (addr_a, addr_b)
        };
        config.upstream.urls = vec![mcp(first), mcp(second)];
        config.relay.batch_max_events = 20;
        relays.push(start_relay(config).await);
    }
    let mut accepted_by = vec![Vec::new(); relays.len()];

    // Control: with both nodes up, everything arrives and nobody fails over.
    round(&relays, &mut accepted_by, 0).await;
    drain(&relays).await;
    assert_eq!(failovers(&relays), [0, 0, 0]);

    // Node a dies with batches in flight: relays 0 and 2 fail over to b and drain there.
    round(&relays, &mut accepted_by, 1).await;
    a.kill().unwrap();
    a.wait().unwrap();
    round(&relays, &mut accepted_by, 2).await;
    drain(&relays).await;
    let after_a = failovers(&relays);
    assert!(
        after_a[0] >= 1 && after_a[1] == 0 && after_a[2] >= 1,
        "{after_a:?}"
    );

    // a is back; the database crashes mid-stream and restarts: nothing acked is lost.
    a = node(addr_a, &url).await;
    round(&relays, &mut accepted_by, 3).await;
    pg.stop_immediate();
    round(&relays, &mut accepted_by, 4).await;
    // The crash is seen: the nodes answer errors, the relays hold their events.
    for relay in &relays {
        let what = "a relay told of the database failure";
        poll_until(
            WAIT,
            what,
            || async { Some(relay.status.report("-", &relay.outbox.stats())) },
            |r| {
                r.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("database"))
                    && r.backlog_events > 0
            },
        )
        .await;
    }
    pg.start_again();
    drain(&relays).await;

    // Node b dies: every relay still on b (sticky) fails over to a.
    round(&relays, &mut accepted_by, 5).await;
    b.kill().unwrap();
    b.wait().unwrap();
    round(&relays, &mut accepted_by, 6).await;
    drain(&relays).await;
    let after_b = failovers(&relays);
    assert!(after_b.iter().all(|&n| n >= 1), "{after_b:?}");
    b = node(addr_b, &url).await;
    round(&relays, &mut accepted_by, 7).await;
    drain(&relays).await;

    // The database's own view: every accepted event once, at its seq, in order.
    let store: SinkBackend = Arc::new(PgStore::connect(&url).await.unwrap()).into();
    for (i, (relay, accepted)) in relays.iter().zip(&accepted_by).enumerate() {
        let stream = relay.outbox.stats().stream;
        let stored = store.events(&format!("gw-{i}"), stream).await.unwrap();
        let result = audit(accepted, &stored);
        assert!(result.is_clean(), "relay {i}: {result}");
        assert_eq!(result.delivered as u64, 8 * ROUND);
    }
    // Negative control of the audit: one event missing is seen as lost.
    let stream = relays[0].outbox.stats().stream;
    let mut stored = store.events("gw-0", stream).await.unwrap();
    stored.remove(ROUND as usize);
    assert_eq!(audit(&accepted_by[0], &stored).lost, 1);
    for relay in relays {
        relay.stop().await;
    }
    drop((a, b));
}
