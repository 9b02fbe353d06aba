//! The two simulated hosts, as turmoil software (restartable closures): the gateway (outbox,
//! relay, local producer) and the reference upstream (sink store + MCP server).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use edge_relay::config::{BufferConfig, Config, Overflow, RelayConfig};
use edge_relay::daemon::{self, Seams};
use edge_relay::event::NewEvent;
use edge_relay::outbox::{Outbox, OutboxConfig, OutboxStats};
use edge_relay::sink::{SinkStore, serve_http_with};
use edge_relay::uplink::http::HttpConnector;
use edge_relay::uplink::http_client::{HttpTimeouts, HyperHttpClient};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::net::{SimConnect, SimListener};
use super::schedule::Schedule;

/// `gateway_id` of the simulated relay.
pub const GATEWAY: &str = "gw-sim";
/// Port of the upstream's MCP endpoint.
const PORT: u16 = 8787;
/// Port of the gateway's HTTP ingest.
const INGEST_PORT: u16 = 7878;
/// Where the relay's connections go in turmoil's DNS.
const UPSTREAM_ADDR: &str = "upstream:8787";
/// The relay's URL: a loopback authority (the sink's Host guard), routed by [`SimConnect`].
const URL: &str = "http://localhost:8787/mcp";
/// Small buffer of the `drop_oldest` runs: about 60 events (two seconds of ingest), so that
/// most outages overflow it.
pub const DROP_OLDEST_MAX_BYTES: u64 = 16 * 1024;
/// Real time a restarted host waits for the previous incarnation's sled lock to be released.
const REOPEN_WAIT: Duration = Duration::from_secs(10);

/// The relay's settings in the simulation: short timeouts so that a run takes seconds of
/// simulated time, small batches so that a run has many of them.
pub fn relay_config() -> RelayConfig {
    RelayConfig {
        batch_max_events: 32,
        batch_max_bytes: 64 * 1024,
        backoff_initial_ms: 100,
        backoff_max_ms: 2000,
        request_timeout_ms: 2000,
        // The shipped defaults: several calls in flight, compressed batches.
        ..RelayConfig::default()
    }
}

/// State that outlives host restarts: what the producer was told, and probes for the checker.
#[derive(Default)]
pub struct Shared {
    /// `(seq, id)` as answered to the producer, in answer order.
    pub accepted: Vec<(u64, Uuid)>,
    /// Events posted and not answered yet (the relay died meanwhile): re-sent, same ids.
    pub pending: Option<Vec<NewEvent>>,
    /// Producer's draw of ids and pauses; kept here so a restart does not replay it.
    pub rng: Option<StdRng>,
    /// Events the producer made so far (their `data`).
    pub made: u64,
    /// Set by the harness when the last fault healed: post nothing new.
    pub stop_ingest: bool,
    /// Counters of the current (or last) outbox incarnation.
    pub relay: Option<watch::Receiver<OutboxStats>>,
    /// The current (or last) upstream store; weak, so a crash releases its sled lock.
    pub sink: Weak<SinkStore>,
}

/// Handle to [`Shared`], cloned into every host.
#[derive(Clone, Default)]
pub struct SharedRef(Arc<Mutex<Shared>>);

impl SharedRef {
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens a sled-backed store, retrying while a crashed incarnation still holds its lock.
async fn open_retrying<T, E: std::fmt::Display>(
    what: &str,
    open: impl Fn() -> Result<T, E>,
) -> turmoil::Result<T> {
    let deadline = Instant::now() + REOPEN_WAIT;
    loop {
        match open() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("{what} not reopened after {REOPEN_WAIT:?}: {e}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// The upstream's software: open the store in `dir`, serve MCP on `upstream:8787` forever.
pub async fn upstream(dir: PathBuf, shared: SharedRef) -> turmoil::Result {
    let store = open_retrying("sink store", || SinkStore::open(&dir)).await?;
    let store = Arc::new(store);
    shared.lock().sink = Arc::downgrade(&store);
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    // Never cancelled: the harness stops this host only by crashing it. No SSE keep-alive:
    // its timer reads the real clock (see `serve_http_with`).
    let never = CancellationToken::new();
    serve_http_with(SimListener(listener), store, never, None).await?;
    Err("serve_http returned".into())
}

/// The gateway's software: the daemon as it ships ([`daemon::start`]: outbox, writer, HTTP
/// ingest, relay) on the simulated network, and a producer appending to its outbox until the
/// harness says stop.
pub async fn relay(dir: PathBuf, shared: SharedRef, schedule: Arc<Schedule>) -> turmoil::Result {
    let config = gateway_config(dir);
    let timeouts = HttpTimeouts {
        connect: config.relay.request_timeout(),
        response_headers: config.relay.request_timeout(),
    };
    let deadline = Instant::now() + REOPEN_WAIT;
    let daemon = loop {
        let target = SimConnect {
            target: UPSTREAM_ADDR,
        };
        let client = HyperHttpClient::with_connector(target, timeouts)?;
        let seams = Seams {
            listener: Some(SimListener(
                turmoil::net::TcpListener::bind(("0.0.0.0", INGEST_PORT)).await?,
            )),
            connector: Some(Box::new(HttpConnector::with_client(URL, None, client))),
            watchdog: None,
            outbox: Some(outbox_config(schedule.drop_oldest)),
        };
        match daemon::start(config.clone(), seams).await {
            Ok(daemon) => break daemon,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("daemon not restarted after {REOPEN_WAIT:?}: {e:#}").into());
            }
            // A crashed incarnation still holds the sled lock.
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    };
    shared.lock().relay = Some(daemon.outbox.watch());
    produce(&daemon.outbox, &shared, &schedule).await?;
    // The host must stay up: when its main future ends, turmoil stops driving its tasks.
    std::future::pending().await
}

/// The simulated gateway's config: the shipped defaults, the simulation's [`relay_config`].
fn gateway_config(data_dir: PathBuf) -> Config {
    let mut config = Config {
        gateway_id: GATEWAY.into(),
        data_dir,
        relay: relay_config(),
        ..Config::default()
    };
    config.upstream.url = URL.into();
    config
}

/// The outbox's bounds: the shipped ones, or under `drop_oldest` a buffer of
/// [`DROP_OLDEST_MAX_BYTES`] (below what `validate()` allows an operator).
fn outbox_config(drop_oldest: bool) -> OutboxConfig {
    let mut buffer = BufferConfig::default();
    if drop_oldest {
        buffer.max_bytes = DROP_OLDEST_MAX_BYTES;
        buffer.overflow = Overflow::DropOldest;
    }
    OutboxConfig::from(&buffer)
}

/// A local producer: posts 1-6 events at a seeded pace, re-sends an unanswered post with the
/// same ids after a restart (the idempotent retry the ingest API promises), records answers.
async fn produce(outbox: &Outbox, shared: &SharedRef, schedule: &Schedule) -> turmoil::Result {
    loop {
        let (events, pause) = {
            let mut s = shared.lock();
            let s = &mut *s;
            if s.pending.is_none() && s.stop_ingest {
                return Ok(());
            }
            let rng = s
                .rng
                .get_or_insert_with(|| StdRng::seed_from_u64(schedule.seed ^ 0x5eed));
            let (lo, hi) = schedule.ingest_every_ms;
            let pause = Duration::from_millis(rng.random_range(lo..=hi));
            if s.pending.is_none() {
                let n = rng.random_range(1..=6);
                let batch = (0..n)
                    .map(|_| {
                        s.made += 1;
                        new_event(Uuid::from_u128(rng.random()), s.made)
                    })
                    .collect();
                s.pending = Some(batch);
            }
            (s.pending.clone().unwrap_or_default(), pause)
        };
        match outbox.append(events).await {
            Ok(appended) => {
                let mut s = shared.lock();
                s.accepted.extend(appended.assigned);
                s.pending = None;
            }
            // Closed only while the host dies; Full cannot happen (reject: a huge buffer,
            // drop_oldest: makes room), so anything else is a failure of the run.
            Err(e) => return Err(format!("append failed: {e}").into()),
        }
        tokio::time::sleep(pause).await;
    }
}

fn new_event(id: Uuid, n: u64) -> NewEvent {
    NewEvent {
        id: Some(id),
        source: "sim".into(),
        kind: "sensor".into(),
        time: None,
        data: serde_json::json!({ "n": n, "pad": "x".repeat(64) }),
    }
}

/// A fresh temp dir on tmpfs when there is one (fsync cost is not what this suite measures).
pub fn temp_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("edge-relay-sim")
            .tempdir_in(shm)
    {
        return Ok(dir);
    }
    tempfile::tempdir()
}
