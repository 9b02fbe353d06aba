//! The fleet on PostgreSQL under faults: `crash-sink-node` (`kill -9` of either of two
//! `edge-relay sink --store postgres` nodes) and `postgres-restart` (`pg_ctl stop -m
//! immediate` + start of the database under both nodes), while a relay listing both
//! (`upstream.urls`) delivers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use edge_relay::sink::PgStore;
use rand::RngExt;
use rand::rngs::StdRng;

use crate::crash_families::{
    KILL_AFTER_MS, PEER_BATCH, PEER_CYCLES_VAR, PEER_PACE_MS, RunEnd, family, outbox_acked_seq,
    settle,
};
use crate::real_net::*;
use crate::support::postgres::Postgres;
use crate::support::process::{DaemonChild, binary, free_port, kill_9, spawn_listening};
use crate::support::{acked_at_least, relay_config, start_relay};

/// Sink-node kills in CI (alternating nodes, at random moments of delivery).
const NODE_CYCLES: u64 = 50;
/// Database crashes in CI (each a WAL replay at start, ~1 s here).
const POSTGRES_CYCLES: u64 = 20;

/// Two sink nodes on one database, in their own processes, and the relay in this one.
struct Fleet {
    url: String,
    addrs: [SocketAddr; 2],
    nodes: [DaemonChild; 2],
}

impl Fleet {
    async fn start(pg: &Postgres, db: &str) -> Fleet {
        let url = pg.create_db(db).await;
        let addrs = [free_port(), free_port()];
        let nodes = [node(addrs[0], &url).await, node(addrs[1], &url).await];
        Fleet { url, addrs, nodes }
    }

    fn urls(&self) -> Vec<String> {
        self.addrs
            .iter()
            .map(|a| format!("http://{a}/mcp"))
            .collect()
    }

    /// `kill -9` of node `i`, then a new process on its port.
    async fn crash(&mut self, i: usize) {
        kill_9(&mut self.nodes[i]);
        self.nodes[i] = node(self.addrs[i], &self.url).await;
    }

    /// Kills both nodes; returns a handle on the database for the audit.
    async fn stop(mut self) -> Arc<PgStore> {
        for node in &mut self.nodes {
            kill_9(node);
        }
        Arc::new(
            PgStore::connect(&self.url)
                .await
                .expect("the fleet database"),
        )
    }
}

async fn node(addr: SocketAddr, url: &str) -> DaemonChild {
    let mut cmd = family_child(binary());
    cmd.args(["sink", "--listen", &addr.to_string(), "--store", url]);
    // Killed when dropped, so a failing run leaves no node behind.
    DaemonChild(spawn_listening(&mut cmd, addr, "a sink node").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sink_node() {
    fleet_family("crash-sink-node", NODE_CYCLES, async |fleet, _, cycle| {
        fleet.crash(cycle as usize % 2).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart() {
    fleet_family("postgres-restart", POSTGRES_CYCLES, async |_, pg, _| {
        pg.stop_immediate();
        pg.start_again();
    })
    .await;
}

/// A fleet family on a cluster of its own, a database per run: `fault(fleet, cluster, cycle)`
/// is one fault.
async fn fleet_family(
    name: &str,
    cycles: u64,
    mut fault: impl AsyncFnMut(&mut Fleet, &Postgres, u64),
) {
    let pg = Postgres::start();
    let mut runs = 0;
    family(name, PEER_CYCLES_VAR, cycles, async |rng, dir, kills| {
        runs += 1;
        let fleet = Fleet::start(&pg, &format!("run{runs}")).await;
        fleet_run(rng, dir, kills, fleet, async |fleet, cycle| {
            fault(fleet, &pg, cycle).await
        })
        .await
    })
    .await;
}

/// One run: a relay listing both nodes, a paced producer, and `cycles` faults by `fault`, each
/// at a random moment while the relay delivers; then the drain and the database's events.
async fn fleet_run(
    rng: &mut StdRng,
    dir: &Path,
    cycles: u64,
    mut fleet: Fleet,
    mut fault: impl AsyncFnMut(&mut Fleet, u64),
) -> RunEnd {
    let mut config = relay_config(&dir.join("relay"), "");
    config.gateway_id = GATEWAY.to_owned();
    config.upstream.urls = fleet.urls();
    let relay = start_relay(config).await;
    let producer = http_producer(relay.ingest_addr, rng.random(), PEER_BATCH, PEER_PACE_MS);
    let acked_seqs = Arc::new(
        PgStore::connect(&fleet.url)
            .await
            .expect("the fleet database"),
    );
    let sampler = AckedSeqSampler::start(
        outbox_acked_seq(relay.outbox.clone()),
        stored_acked_seq(acked_seqs),
    );
    for cycle in 0..cycles {
        acked_at_least(&relay, relay.outbox.stats().acked_seq + 1).await;
        hold(rng, KILL_AFTER_MS).await;
        fault(&mut fleet, cycle).await;
    }
    let (accepted, stream, drain) = settle(relay, producer, sampler).await;
    let store = fleet.stop().await;
    RunEnd {
        accepted,
        stored: store
            .events(GATEWAY, stream)
            .await
            .expect("the stored events"),
        drain,
    }
}
