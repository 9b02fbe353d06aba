//! Store-and-forward through an upstream outage, side by side on the same Daphnet events:
//! edge-relay over MCP over MQTT versus a plain Mosquitto bridge.
//!
//! `cargo bench --bench mqtt_vs_bridge [-- --events N --autosave-interval SECS
//! --autosave-on-changes --bridge-protocol mqttv311|mqttv50]`
//!
//! - A, edge-relay: producer → `edge-relay run` (child process; HTTP ingest, NDJSON bodies of
//!   100) → MCP over MQTT through the upstream Mosquitto → the reference upstream (`serve_mqtt`
//!   on a `SinkStore`, in this process). Outage: the upstream broker and the sink stopped while
//!   N events are produced; then both restarted, timed until the store's acked seq covers them.
//! - B, Mosquitto bridge: producer (QoS 1, a window of in-flight publishes) → local Mosquitto
//!   (persistence, QoS 1 bridge `topic sensors/# out 1`) → upstream Mosquitto (persistence) →
//!   a subscriber with a persistent session. Outage: the upstream broker stopped meanwhile.
//! - C: the same with one kill -9 during the outage, after half the events were accepted:
//!   the relay (restarted on its data dir) or the local Mosquitto (restarted on its
//!   persistence dir). Producers re-send what was not confirmed (the relay's with the same
//!   producer ids, which the outbox treats as idempotent retries).
//!
//! Every wait is bounded; a run that does not finish in time is reported with what it got.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use edge_relay::cli::local_client;
use edge_relay::contract::IngestAnswer;
use edge_relay::demo::audit::audit;
use edge_relay::demo::daphnet;
use edge_relay::demo::mosquitto::{MAX_QUEUED_MESSAGES, Mosquitto};
use edge_relay::sink::mqtt::MqttServe;
use edge_relay::sink::{SinkHandle, SinkSpec, SinkStore};
use hyper::Method;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events produced per run unless `--events` says otherwise.
const DEFAULT_EVENTS: usize = 50_000;
/// Events per `POST /v1/events` NDJSON body.
const BODY_EVENTS: usize = 100;
/// In-flight QoS 1 publishes of the bridge producer (Mosquitto's default receive maximum).
const WINDOW: usize = 20;
/// Mosquitto `autosave_interval` (seconds) of both bridge brokers unless `--autosave-interval`.
const DEFAULT_AUTOSAVE_S: u32 = 1;
/// Bridge reconnect backoff `restart_timeout BASE CAP` in seconds, comparable to the relay's
/// cap. Mosquitto 2.0.11 ignores a single constant value (fixed in 2.0.15): it keeps its default
/// jittered backoff from 5 s, so the constant form reconnects after 5-6 s, not 1 s.
const BRIDGE_RESTART: &str = "1 2";
/// The relay's reconnect backoff (`relay.backoff_initial_ms`, `relay.backoff_max_ms`).
const RELAY_BACKOFF_MS: (u64, u64) = (100, 1000);

/// Longest the producers may take for all N events (retries after a kill included).
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest a drain may take after the outage ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bridge drain: no new message for this long ends the wait (the bridge has nothing more).
const QUIET: Duration = Duration::from_secs(5);
/// Bridge drain: longest wait for the first message after the outage ends.
const FIRST_MESSAGE_GRACE: Duration = Duration::from_secs(30);
/// Bridge drain: after the count reached N, listen this long more for late duplicates.
const DUPLICATE_SETTLE: Duration = Duration::from_secs(1);
/// Longest wait for a broker connection, a CONNACK, a SUBACK or any MQTT progress.
const MQTT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the relay to serve its ingest, or to connect upstream.
const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a probe message to cross the bridge before the outage.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between retries of a refused connection, and between polls of a condition.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const POLL: Duration = Duration::from_millis(5);

const GATEWAY: &str = "bench-gw";
const SERVER_NAME: &str = "bench/ingest";
const TOPIC: &str = "sensors/daphnet";
const PROBE_TOPIC: &str = "sensors/probe";
const BRIDGE_NAME: &str = "bench-bridge";
const SUBSCRIBER_ID: &str = "bench-subscriber";
/// Session expiry of the bridge subscriber, seconds.
const SUBSCRIBER_SESSION_S: u32 = 3600;
/// rumqttc's incoming packet limit (its default is 10 KiB).
const MAX_PACKET: u32 = 1 << 20;

struct Options {
    events: usize,
    autosave_s: u32,
    /// `autosave_on_changes true`: `autosave_interval` counts changes, not seconds.
    autosave_on_changes: bool,
    bridge_protocol: String,
}

impl Options {
    /// How the bridge brokers save their in-memory database.
    fn autosave(&self) -> String {
        if self.autosave_on_changes {
            format!(
                "autosave_on_changes true, autosave_interval {} (changes)",
                self.autosave_s
            )
        } else if self.autosave_s == 0 {
            "autosave_interval 0 (saves only at shutdown)".into()
        } else {
            // loop.c saves when `last_backup + autosave_interval < now` (whole seconds).
            format!(
                "autosave_interval {} s (saves every {} s: Mosquitto compares whole seconds \
                 with <)",
                self.autosave_s,
                self.autosave_s + 1
            )
        }
    }

    fn parse() -> anyhow::Result<Self> {
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let events = match value("--events") {
            Some(v) => v.parse().context("--events")?,
            None => DEFAULT_EVENTS,
        };
        let autosave_s = match value("--autosave-interval") {
            Some(v) => v.parse().context("--autosave-interval")?,
            None => DEFAULT_AUTOSAVE_S,
        };
        let bridge_protocol = value("--bridge-protocol").unwrap_or_else(|| "mqttv311".into());
        anyhow::ensure!(events >= 2, "--events must be at least 2");
        anyhow::ensure!(
            ["mqttv311", "mqttv50"].contains(&bridge_protocol.as_str()),
            "--bridge-protocol: mqttv311 or mqttv50"
        );
        Ok(Self {
            events,
            autosave_s,
            autosave_on_changes: args.iter().any(|a| a == "--autosave-on-changes"),
            bridge_protocol,
        })
    }
}

/// The same N events for every run: the Daphnet recording cycled, each with a producer id.
struct Workload {
    events: Vec<Value>,
    /// NDJSON bodies of [`BODY_EVENTS`] for the relay's ingest.
    bodies: Vec<Bytes>,
}

impl Workload {
    fn new(n: usize) -> anyhow::Result<Self> {
        let samples = daphnet::samples().map_err(anyhow::Error::msg)?;
        let events: Vec<Value> = samples
            .iter()
            .flat_map(|s| s.events.iter())
            .cycle()
            .take(n)
            .map(|e| {
                let mut e = e.clone();
                e["id"] = Value::String(Uuid::now_v7().to_string());
                e
            })
            .collect();
        let bodies = events
            .chunks(BODY_EVENTS)
            .map(|chunk| {
                let lines: Vec<String> = chunk.iter().map(Value::to_string).collect();
                Bytes::from(lines.join("\n"))
            })
            .collect();
        Ok(Self { events, bodies })
    }

    /// The bridge payload of event `n`: the event plus its counter and the producer's attempt.
    fn payload(&self, n: usize, attempt: u32) -> Bytes {
        let mut e = self.events[n].clone();
        e["n"] = n.into();
        e["try"] = attempt.into();
        Bytes::from(e.to_string())
    }
}

/// One line of the result table, plus what was noticed on the way.
struct Row {
    scenario: &'static str,
    system: &'static str,
    produced: usize,
    delivered: usize,
    lost: usize,
    duplicates: usize,
    order: String,
    /// From the end of the outage to the last event stored or received; `None`: nothing came.
    drain: Option<Duration>,
    notes: Vec<String>,
}

/// Progress on stderr, with seconds since the bench started.
fn progress(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[{:7.1} s] {what}", start.elapsed().as_secs_f64());
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Polls `cond` every [`POLL`] until it holds; false if `timeout` passed first.
async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64().max(1e-9))
}

// ---------------------------------------------------------------------------------------------
// A: edge-relay over MCP over MQTT

/// `edge-relay run --config FILE` as a child process, restartable on the same data dir.
struct RelayChild {
    child: tokio::process::Child,
    config: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
}

impl RelayChild {
    async fn start(dir: &Path, broker_url: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = dir.join("edge-relay.toml");
        std::fs::write(
            &config,
            format!(
                "gateway_id = \"{GATEWAY}\"\ndata_dir = \"{}\"\n\n\
                 [ingest.http]\nlisten = \"{addr}\"\n\n\
                 [upstream]\ntransport = \"mqtt\"\nurl = \"{broker_url}\"\n\
                 server_name = \"{SERVER_NAME}\"\n\n\
                 [buffer]\nmax_bytes = 1073741824\n\n\
                 [relay]\nbackoff_initial_ms = {}\nbackoff_max_ms = {}\n",
                dir.join("data").display(),
                RELAY_BACKOFF_MS.0,
                RELAY_BACKOFF_MS.1
            ),
        )?;
        let log = dir.join("edge-relay.log");
        let child = Self::spawn(&config, &log)?;
        let mut relay = Self {
            child,
            config,
            log,
            addr,
        };
        relay.wait_ready().await?;
        Ok(relay)
    }

    fn spawn(config: &Path, log: &Path) -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-relay"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning edge-relay run")
    }

    /// `GET /v1/status`, if the daemon answers.
    async fn status(&self) -> Option<Value> {
        let (code, text) = local_client::request(self.addr, Method::GET, "/v1/status", Vec::new())
            .await
            .ok()?;
        (code == 200).then(|| serde_json::from_str(&text).ok())?
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + RELAY_READY_TIMEOUT;
        while self.status().await.is_none() {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "edge-relay exited at start ({status}):\n{}",
                    self.log_text()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "edge-relay did not serve {} within {RELAY_READY_TIMEOUT:?}",
                self.addr
            );
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Ok(())
    }

    async fn wait_connected(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + RELAY_READY_TIMEOUT;
        loop {
            let status = self.status().await;
            if status
                .as_ref()
                .is_some_and(|s| s["upstream"] == "connected")
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "edge-relay not connected upstream within {RELAY_READY_TIMEOUT:?}: {status:?}"
            );
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// kill -9, then the same binary and config again on the same data dir.
    async fn kill9_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        self.child = Self::spawn(&self.config, &self.log)?;
        self.wait_ready().await
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The reference upstream served over MQTT only from `store`, until stopped.
async fn serve_sink(store: &Arc<SinkStore>, broker_url: &str) -> anyhow::Result<SinkHandle> {
    let spec = SinkSpec::mqtt(MqttServe {
        url: broker_url.to_owned(),
        server_name: SERVER_NAME.into(),
        password: None,
        reconnect_max: edge_relay::sink::mqtt::BACKOFF.1,
    });
    SinkHandle::share(store.clone(), spec).await
}

/// Stops a [`serve_sink`] sink within [`MQTT_TIMEOUT`].
async fn stop_sink(sink: SinkHandle) -> anyhow::Result<()> {
    tokio::time::timeout(MQTT_TIMEOUT, sink.stop())
        .await
        .context("sink did not stop")??;
    Ok(())
}

/// What an HTTP producer got: `(seq, id)` per accepted event in answer order, and retries.
struct HttpProduced {
    accepted: Vec<(u64, Uuid)>,
    retries: usize,
    took: Duration,
}

/// Posts every body in turn; a request that fails (daemon gone) is re-sent as is after
/// [`RETRY_PAUSE`], which the outbox answers idempotently (same producer ids, same seqs).
async fn produce_http(
    addr: SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    accepted_count: Arc<AtomicUsize>,
) -> anyhow::Result<HttpProduced> {
    let start = Instant::now();
    let mut accepted = Vec::new();
    let mut retries = 0;
    for body in bodies.iter() {
        loop {
            anyhow::ensure!(
                start.elapsed() < PRODUCE_TIMEOUT,
                "production not done within {PRODUCE_TIMEOUT:?}"
            );
            match local_client::request(addr, Method::POST, "/v1/events", body.to_vec()).await {
                Ok((200, text)) => {
                    let answer: IngestAnswer = serde_json::from_str(&text)?;
                    let pairs = answer.pairs().map_err(anyhow::Error::msg)?;
                    accepted_count.fetch_add(pairs.len(), Ordering::Relaxed);
                    accepted.extend(pairs);
                    break;
                }
                Ok((code, text)) => anyhow::bail!("ingest refused a body: {code} {text}"),
                Err(_) => {
                    retries += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
    Ok(HttpProduced {
        accepted,
        retries,
        took: start.elapsed(),
    })
}

impl HttpProduced {
    /// Events accepted, each id once.
    fn distinct(&self) -> usize {
        let ids: HashSet<Uuid> = self.accepted.iter().map(|(_, id)| *id).collect();
        ids.len()
    }
}

/// When the sink stored its first event and when its acked seq covered `last_seq`.
struct StoreDrain {
    first: Option<Duration>,
    done: Option<Duration>,
}

/// Waits until the sink's acked seq for the relay's stream reaches `last_seq`; the cheap in-memory
/// counter gates the (fsyncing) acked seq reads.
async fn wait_store(
    store: &SinkStore,
    stream: Uuid,
    expected: usize,
    last_seq: u64,
    t0: Instant,
) -> anyhow::Result<StoreDrain> {
    let mut first = None;
    while t0.elapsed() < DRAIN_TIMEOUT {
        let stored = store.stats().events_stored as usize;
        if first.is_none() && stored > 0 {
            first = Some(t0.elapsed());
        }
        if stored >= expected {
            let at = t0.elapsed();
            if store.cursor(GATEWAY, stream).await?.acked_seq >= Some(last_seq) {
                return Ok(StoreDrain {
                    first,
                    done: Some(at),
                });
            }
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(StoreDrain { first, done: None })
}

/// A and C for edge-relay: outage (upstream broker and sink stopped) while N events are
/// produced, optionally with a kill -9 of the relay half-way; then the timed drain.
async fn run_relay(
    tmp: &Path,
    work: &Workload,
    kill: bool,
    bodies: &Arc<Vec<Bytes>>,
) -> anyhow::Result<Row> {
    let dir = tmp.join(if kill { "relay-kill" } else { "relay" });
    let n = work.events.len();
    let mut broker = Mosquitto::start(&dir.join("upstream-broker"), false)?;
    let store = Arc::new(SinkStore::open(&dir.join("sink"))?);
    let sink = serve_sink(&store, &broker.url()).await?;
    let mut relay = RelayChild::start(&dir.join("relay"), &broker.url()).await?;
    relay.wait_connected().await?;
    progress(&format!(
        "A{}: relay connected; outage begins",
        if kill { " + kill -9" } else { "" }
    ));

    // Outage: the whole upstream side goes dark.
    blocking(|| broker.stop());
    stop_sink(sink).await?;
    let count = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce_http(relay.addr, bodies.clone(), count.clone()));
    let mut notes = Vec::new();
    if kill {
        let half = wait_for(PRODUCE_TIMEOUT, || count.load(Ordering::Relaxed) >= n / 2).await;
        anyhow::ensure!(half, "relay producer stalled before half");
        let at = count.load(Ordering::Relaxed);
        relay.kill9_and_restart().await?;
        notes.push(format!(
            "kill -9 of edge-relay after {at} events accepted; restarted on the same data dir"
        ));
    }
    let produced = tokio::time::timeout(PRODUCE_TIMEOUT, producer)
        .await
        .context("relay producer timed out")???;
    progress("A: produced; outage ends");
    // A re-sent body that had been committed is answered again: count its events once.
    let distinct = produced.distinct();
    notes.push(format!(
        "production during the outage: {distinct} events in {} ms ({} ev/s), {} request(s) re-sent",
        ms(produced.took),
        rate(distinct, produced.took),
        produced.retries
    ));
    let status = relay.status().await.context("relay status")?;
    let stream: Uuid = serde_json::from_value(status["stream"].clone()).context("status.stream")?;
    let last_seq = produced.accepted.iter().map(|(s, _)| *s).max().unwrap_or(0);

    // The outage ends.
    let t0 = Instant::now();
    blocking(|| broker.restart())?;
    let sink = serve_sink(&store, &broker.url()).await?;
    let drain = wait_store(&store, stream, distinct, last_seq, t0).await?;
    progress("A: drained");
    let stored = store.events(GATEWAY, stream)?;
    let result = audit(&produced.accepted, &stored);
    if let Some(first) = drain.first {
        notes.push(format!(
            "first event stored {} ms after the outage ended (broker restart, relay backoff \
             {}..{} ms, discovery, initialize)",
            ms(first),
            RELAY_BACKOFF_MS.0,
            RELAY_BACKOFF_MS.1
        ));
    }
    if drain.done.is_none() {
        notes.push(format!(
            "NOT drained within {DRAIN_TIMEOUT:?}: acked seq {:?} of {last_seq}",
            store.cursor(GATEWAY, stream).await?.acked_seq
        ));
    }
    if let (Some(first), Some(done)) = (drain.first, drain.done) {
        notes.push(format!(
            "transfer after the first event: {} ev/s",
            rate(result.delivered, done.saturating_sub(first))
        ));
    }
    if let Some(s) = relay.status().await {
        notes.push(format!("relay reconnects: {}", s["reconnects"]));
    }
    stop_sink(sink).await?;
    drop(relay);
    Ok(Row {
        scenario: if kill { "outage + kill -9" } else { "outage" },
        system: "A edge-relay / MCP over MQTT",
        produced: result.produced,
        delivered: result.delivered,
        lost: result.lost,
        duplicates: result.duplicates,
        order: if result.order_ok { "ok" } else { "broken" }.into(),
        drain: drain.done,
        notes,
    })
}

/// Plain MCP over MQTT drain: N events buffered while no upstream serves, then the sink starts.
async fn run_drain_only(
    tmp: &Path,
    n: usize,
    bodies: &Arc<Vec<Bytes>>,
) -> anyhow::Result<(Duration, Option<Duration>)> {
    let dir = tmp.join("relay-drain");
    let broker = Mosquitto::start(&dir.join("upstream-broker"), false)?;
    let store = Arc::new(SinkStore::open(&dir.join("sink"))?);
    let relay = RelayChild::start(&dir.join("relay"), &broker.url()).await?;
    progress("drain only: relay up, filling the backlog");
    let produced = produce_http(relay.addr, bodies.clone(), Arc::default()).await?;
    anyhow::ensure!(produced.distinct() == n, "not all events accepted");
    let status = relay.status().await.context("relay status")?;
    let stream: Uuid = serde_json::from_value(status["stream"].clone()).context("status.stream")?;
    let last_seq = produced.accepted.iter().map(|(s, _)| *s).max().unwrap_or(0);
    let t0 = Instant::now();
    let sink = serve_sink(&store, &broker.url()).await?;
    let drain = wait_store(&store, stream, n, last_seq, t0).await?;
    progress("drain only: drained");
    let result = audit(&produced.accepted, &store.events(GATEWAY, stream)?);
    anyhow::ensure!(result.is_clean(), "drain-only run not clean: {result}");
    stop_sink(sink).await?;
    drop(relay);
    let done = drain.done.context("drain-only run did not finish")?;
    Ok((done, drain.first))
}

// ---------------------------------------------------------------------------------------------
// B: plain Mosquitto bridge

/// What the upstream subscriber saw.
#[derive(Default)]
struct Inbox {
    /// `(n, try)` of every message on [`TOPIC`], in arrival order.
    receipts: Vec<(u64, u32)>,
    /// Distinct counters received below N.
    distinct: usize,
    seen: Vec<bool>,
    first_at: Option<Instant>,
    /// Last receipt of any message, and of a counter not seen before.
    last_at: Option<Instant>,
    last_new_at: Option<Instant>,
    probes: usize,
    subscribed: bool,
    connects: usize,
    /// CONNACKs with `session_present: false` after the first: the broker forgot the session.
    sessions_lost: usize,
}

/// A persistent-session subscriber to `sensors/#` at QoS 1 on the upstream broker, reconnecting
/// every [`RETRY_PAUSE`] while the broker is down.
fn spawn_subscriber(
    port: u16,
    n: usize,
    inbox: Arc<Mutex<Inbox>>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let mut opts = MqttOptions::new(SUBSCRIBER_ID, "127.0.0.1", port);
    opts.set_clean_start(false)
        .set_session_expiry_interval(Some(SUBSCRIBER_SESSION_S))
        .set_max_packet_size(Some(MAX_PACKET))
        .set_keep_alive(Duration::from_secs(15));
    inbox.lock().unwrap().seen = vec![false; n];
    tokio::spawn(async move {
        let (client, mut events) = AsyncClient::new(opts, 16);
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => break,
                e = events.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let mut inbox = inbox.lock().unwrap();
                    inbox.connects += 1;
                    if !ack.session_present {
                        if inbox.connects > 1 {
                            inbox.sessions_lost += 1;
                        }
                        let _ = client.try_subscribe("sensors/#", QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => inbox.lock().unwrap().subscribed = true,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let mut inbox = inbox.lock().unwrap();
                    if p.topic == PROBE_TOPIC.as_bytes() {
                        inbox.probes += 1;
                        continue;
                    }
                    let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    let (k, attempt) = (
                        v["n"].as_u64().unwrap_or(u64::MAX),
                        v["try"].as_u64().unwrap_or(0) as u32,
                    );
                    let now = Instant::now();
                    inbox.receipts.push((k, attempt));
                    inbox.first_at.get_or_insert(now);
                    inbox.last_at = Some(now);
                    if let Some(seen) = inbox.seen.get_mut(k as usize)
                        && !*seen
                    {
                        *seen = true;
                        inbox.distinct += 1;
                        inbox.last_new_at = Some(now);
                    }
                }
                Ok(_) => {}
                // rumqttc reconnects on the next poll, at once: pace it.
                Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    })
}

/// What the bridge producer got.
struct MqttProduced {
    /// PUBACK received for event n.
    accepted: Vec<bool>,
    /// PUBLISH packets sent, re-sends included.
    publishes: usize,
    /// Connections that failed under the producer.
    reconnects: usize,
    took: Duration,
}

/// Publishes every event at QoS 1 to the local broker with at most [`WINDOW`] unacknowledged.
/// After a connection loss everything unconfirmed is re-sent, in order, on a new clean session
/// (a new client, so rumqttc's own queues cannot replay or drop anything behind our back).
async fn produce_mqtt(
    port: u16,
    work: Arc<Workload>,
    accepted_count: Arc<AtomicUsize>,
) -> anyhow::Result<MqttProduced> {
    let start = Instant::now();
    let n = work.events.len();
    let mut out = MqttProduced {
        accepted: vec![false; n],
        publishes: 0,
        reconnects: 0,
        took: Duration::ZERO,
    };
    let mut attempts = vec![0u32; n];
    let mut todo: VecDeque<usize> = (0..n).collect();
    let mut epoch = 0;
    while !todo.is_empty() {
        anyhow::ensure!(
            start.elapsed() < PRODUCE_TIMEOUT,
            "bridge production not done within {PRODUCE_TIMEOUT:?}"
        );
        epoch += 1;
        let mut opts = MqttOptions::new(format!("bench-producer-{epoch}"), "127.0.0.1", port);
        opts.set_max_packet_size(Some(MAX_PACKET))
            .set_keep_alive(Duration::from_secs(15));
        let (client, mut events) = AsyncClient::new(opts, WINDOW * 2);
        match tokio::time::timeout(MQTT_TIMEOUT, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
            _ => {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        }
        // Published in order; rumqttc numbers them in the same order (Outgoing::Publish).
        let mut unnumbered: VecDeque<usize> = VecDeque::new();
        let mut in_flight: HashMap<u16, usize> = HashMap::new();
        loop {
            while unnumbered.len() + in_flight.len() < WINDOW
                && let Some(i) = todo.pop_front()
            {
                attempts[i] += 1;
                client
                    .try_publish(TOPIC, QoS::AtLeastOnce, false, work.payload(i, attempts[i]))
                    .context("request channel full")?;
                unnumbered.push_back(i);
                out.publishes += 1;
            }
            if unnumbered.is_empty() && in_flight.is_empty() {
                break;
            }
            match tokio::time::timeout(MQTT_TIMEOUT, events.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(i) = unnumbered.pop_front() {
                        in_flight.insert(pkid, i);
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(i) = in_flight.remove(&ack.pkid) {
                        out.accepted[i] = true;
                        accepted_count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => {
                    let mut unconfirmed: Vec<usize> = in_flight
                        .values()
                        .chain(unnumbered.iter())
                        .copied()
                        .collect();
                    unconfirmed.sort_unstable();
                    for i in unconfirmed.into_iter().rev() {
                        todo.push_front(i);
                    }
                    out.reconnects += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    break;
                }
            }
        }
        if todo.is_empty() {
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
        }
    }
    out.took = start.elapsed();
    Ok(out)
}

/// Publishes one QoS 1 message on [`PROBE_TOPIC`] to the local broker (best effort).
async fn publish_probe(port: u16) {
    let mut opts = MqttOptions::new(
        format!("bench-probe-{}", Uuid::now_v7().simple()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(15));
    let (client, mut events) = AsyncClient::new(opts, 4);
    let _ = client.try_publish(PROBE_TOPIC, QoS::AtLeastOnce, false, "probe");
    let acked = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(MQTT_TIMEOUT, acked).await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
}

/// Persistence with our own autosave interval (the helper's generated config already raises
/// `max_queued_messages` to [`MAX_QUEUED_MESSAGES`]; Mosquitto's default, 1000, drops the rest).
fn persistence_conf(dir: &Path, opts: &Options) -> String {
    format!(
        "persistence true\npersistence_location {}/\nautosave_interval {}\n{}",
        dir.display(),
        opts.autosave_s,
        if opts.autosave_on_changes {
            "autosave_on_changes true\n"
        } else {
            ""
        }
    )
}

/// Database saves so far in a Mosquitto log (autosave or shutdown).
fn saves(log: &str) -> usize {
    log.matches("Saving in-memory database").count()
}

fn bridge_conf(upstream: SocketAddr, protocol: &str) -> String {
    format!(
        "connection {BRIDGE_NAME}\naddress {upstream}\nremote_clientid {BRIDGE_NAME}\n\
         bridge_protocol_version {protocol}\ntopic sensors/# out 1\ncleansession false\n\
         restart_timeout {BRIDGE_RESTART}\nnotifications false\n"
    )
}

/// B and C for the bridge: upstream broker stopped while N events are published to the local
/// broker, optionally with a kill -9 of the local broker half-way; then the timed drain.
async fn run_bridge(
    tmp: &Path,
    work: &Arc<Workload>,
    opts: &Options,
    kill: bool,
) -> anyhow::Result<(Row, String)> {
    let dir = tmp.join(if kill { "bridge-kill" } else { "bridge" });
    let n = work.events.len();
    let (up_dir, local_dir) = (dir.join("upstream-broker"), dir.join("local-broker"));
    let mut upstream = Mosquitto::start_with(&up_dir, false, &persistence_conf(&up_dir, opts))?;
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let stop = CancellationToken::new();
    let subscriber = spawn_subscriber(upstream.addr.port(), n, inbox.clone(), stop.clone());
    anyhow::ensure!(
        wait_for(MQTT_TIMEOUT, || inbox.lock().unwrap().subscribed).await,
        "the upstream subscriber did not subscribe"
    );
    let local_conf =
        persistence_conf(&local_dir, opts) + &bridge_conf(upstream.addr, &opts.bridge_protocol);
    let mut local = Mosquitto::start_with(&local_dir, false, &local_conf)?;
    let port = local.addr.port();
    // The bridge is up once a probe crosses it.
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while inbox.lock().unwrap().probes == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no probe crossed the bridge within {PROBE_TIMEOUT:?}; local log:\n{}",
            local.log()
        );
        publish_probe(port).await;
        wait_for(Duration::from_millis(500), || {
            inbox.lock().unwrap().probes > 0
        })
        .await;
    }
    let config_text = std::fs::read_to_string(local.config_path())?;
    progress(&format!(
        "B{}: bridge up; outage begins",
        if kill { " + kill -9" } else { "" }
    ));

    // Outage: the upstream broker stops (gracefully: it saves the subscriber's session).
    blocking(|| upstream.stop());
    let saves_before = saves(&local.log());
    let count = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce_mqtt(port, work.clone(), count.clone()));
    let mut notes = Vec::new();
    if kill {
        let half = wait_for(PRODUCE_TIMEOUT, || count.load(Ordering::Relaxed) >= n / 2).await;
        anyhow::ensure!(half, "bridge producer stalled before half");
        let at = count.load(Ordering::Relaxed);
        let saved = saves(&local.log()) - saves_before;
        blocking(|| {
            local.kill();
            local.restart()
        })?;
        notes.push(format!(
            "kill -9 of the local Mosquitto after {at} events PUBACKed; restarted on the same \
             persistence dir ({})",
            opts.autosave()
        ));
        notes.push(format!(
            "the local Mosquitto saved its database {saved} time(s) while those {at} events \
             were published (its log)"
        ));
    }
    let produced = tokio::time::timeout(PRODUCE_TIMEOUT, producer)
        .await
        .context("bridge producer timed out")???;
    progress("B: produced; outage ends");
    let accepted = produced.accepted.iter().filter(|a| **a).count();
    notes.push(format!(
        "production during the outage: {accepted} events PUBACKed in {} ms ({} ev/s), {} \
         PUBLISH sent ({} re-sent after {} lost connection(s))",
        ms(produced.took),
        rate(accepted, produced.took),
        produced.publishes,
        produced.publishes - n,
        produced.reconnects
    ));

    // The outage ends.
    let t0 = Instant::now();
    let t0_unix = unix_now();
    blocking(|| upstream.restart())?;
    let mut reached_n = false;
    loop {
        tokio::time::sleep(POLL).await;
        let (distinct, last_at) = {
            let inbox = inbox.lock().unwrap();
            (inbox.distinct, inbox.last_at)
        };
        if distinct >= accepted {
            reached_n = true;
            break;
        }
        let quiet_since = last_at.unwrap_or(t0);
        let limit = if last_at.is_some() {
            QUIET
        } else {
            FIRST_MESSAGE_GRACE
        };
        if quiet_since.elapsed() >= limit || t0.elapsed() >= DRAIN_TIMEOUT {
            break;
        }
    }
    progress("B: drain wait over");
    if reached_n {
        tokio::time::sleep(DUPLICATE_SETTLE).await;
    }
    stop.cancel();
    let _ = tokio::time::timeout(MQTT_TIMEOUT, subscriber).await;
    let inbox = std::mem::take(&mut *inbox.lock().unwrap());
    let up_log = upstream.log();
    let local_log = local.log();
    drop(local);
    drop(upstream);

    let analysis = analyse(&produced.accepted, &inbox.receipts);
    // The drain ends with the last new event; late duplicates do not extend it.
    let drain = inbox.last_new_at.map(|at| at.saturating_duration_since(t0));
    if let Some(first) = inbox.first_at {
        notes.push(format!(
            "first event received {} ms after the outage ended (broker restart, bridge \
             restart_timeout {BRIDGE_RESTART} s, subscriber reconnect every {} ms)",
            ms(first.saturating_duration_since(t0)),
            RETRY_PAUSE.as_millis()
        ));
        if let Some(last) = inbox.last_new_at {
            notes.push(format!(
                "transfer after the first event: {} ev/s",
                rate(analysis.delivered, last.saturating_duration_since(first))
            ));
        }
    }
    notes.push(if reached_n {
        format!(
            "the subscriber got all {accepted} accepted events (then listened \
             {DUPLICATE_SETTLE:?} more for duplicates)"
        )
    } else {
        format!(
            "drain ended by the {QUIET:?} quiet period (or {FIRST_MESSAGE_GRACE:?} without a first \
             message / {DRAIN_TIMEOUT:?} in all): the subscriber has {} of {accepted}",
            inbox.distinct
        )
    });
    notes.extend(analysis.notes);
    if inbox.sessions_lost > 0 {
        notes.push(format!(
            "the upstream broker forgot the subscriber's session {} time(s)",
            inbox.sessions_lost
        ));
    }
    // "New bridge connected ... as NAME (p2, ...)": p2 is MQTT 3.1.1, p5 is MQTT 5.
    if let Some((at, line)) = up_log
        .lines()
        .filter(|l| l.contains(&format!(" as {BRIDGE_NAME} ")))
        .filter_map(|l| Some((l.split(':').next()?.parse::<f64>().ok()?, l)))
        .next_back()
    {
        let text = line.split_once(": ").map_or(line, |(_, t)| t);
        notes.push(format!(
            "upstream broker log, {:+.0} s after the restart (1 s resolution): {text}",
            at - t0_unix.floor()
        ));
    }
    let warnings: Vec<&str> = local_log
        .lines()
        .chain(up_log.lines())
        .filter(|l| l.contains("Warning") || l.contains("Error") || l.contains("dropped"))
        .filter(|l| !l.contains("should not be run as root"))
        .collect();
    for w in warnings.iter().take(5) {
        notes.push(format!("broker log: {w}"));
    }
    Ok((
        Row {
            scenario: if kill { "outage + kill -9" } else { "outage" },
            system: "B Mosquitto bridge",
            produced: accepted,
            delivered: analysis.delivered,
            lost: analysis.lost,
            duplicates: analysis.duplicates,
            order: analysis.order,
            drain,
            notes,
        },
        config_text,
    ))
}

struct Analysis {
    delivered: usize,
    lost: usize,
    duplicates: usize,
    order: String,
    notes: Vec<String>,
}

/// Compares PUBACKed events with what the subscriber received.
fn analyse(accepted: &[bool], receipts: &[(u64, u32)]) -> Analysis {
    let n = accepted.len();
    let mut copies = vec![0u32; n];
    let mut attempts: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut strangers = 0;
    let mut late = 0;
    let mut max_first: Option<u64> = None;
    for &(k, attempt) in receipts {
        let Some(c) = copies.get_mut(k as usize) else {
            strangers += 1;
            continue;
        };
        *c += 1;
        attempts.entry(k).or_default().push(attempt);
        if *c == 1 {
            if max_first.is_some_and(|m| k < m) {
                late += 1;
            }
            max_first = max_first.max(Some(k));
        }
    }
    let delivered = (0..n).filter(|&i| accepted[i] && copies[i] > 0).count();
    let unaccepted_received = (0..n).filter(|&i| !accepted[i] && copies[i] > 0).count();
    let lost: Vec<usize> = (0..n).filter(|&i| accepted[i] && copies[i] == 0).collect();
    let extra: usize = copies.iter().map(|c| c.saturating_sub(1) as usize).sum();
    let mut notes = Vec::new();
    let (mut by_broker, mut by_producer) = (0, 0);
    for tries in attempts.values().filter(|t| t.len() > 1) {
        if tries.iter().all(|t| *t == tries[0]) {
            by_broker += tries.len() - 1;
        } else {
            by_producer += tries.len() - 1;
        }
    }
    if extra > 0 {
        notes.push(format!(
            "duplicates: {by_broker} extra copies of one PUBLISH (broker/bridge re-delivery), \
             {by_producer} from the producer re-sending unconfirmed publishes"
        ));
    }
    if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
        let contiguous = last - first + 1 == lost.len();
        notes.push(format!(
            "lost: {} PUBACKed events, counters {first}..={last}{}",
            lost.len(),
            if contiguous {
                " (one contiguous range)"
            } else {
                " (not contiguous)"
            }
        ));
    }
    if strangers + unaccepted_received > 0 {
        notes.push(format!(
            "{strangers} unparseable and {unaccepted_received} never-PUBACKed events received \
             (counted as duplicates)"
        ));
    }
    Analysis {
        delivered,
        lost: lost.len(),
        duplicates: extra + strangers + unaccepted_received,
        order: if late == 0 {
            "ok".into()
        } else {
            format!("{late} late")
        },
        notes,
    }
}

// ---------------------------------------------------------------------------------------------

fn print_table(rows: &[Row]) {
    println!(
        "{:<17} | {:<28} | {:>18} | {:>9} | {:>6} | {:>10} | {:>8} | {:>10} | {:>10}",
        "scenario",
        "system",
        "produced(accepted)",
        "delivered",
        "lost",
        "duplicates",
        "order",
        "drain ms",
        "drain ev/s"
    );
    println!("{}", "-".repeat(143));
    for r in rows {
        let (drain_ms, drain_rate) = match r.drain {
            Some(d) => (ms(d), rate(r.delivered, d)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<17} | {:<28} | {:>18} | {:>9} | {:>6} | {:>10} | {:>8} | {:>10} | {:>10}",
            r.scenario,
            r.system,
            r.produced,
            r.delivered,
            r.lost,
            r.duplicates,
            r.order,
            drain_ms,
            drain_rate
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let opts = Options::parse()?;
    let n = opts.events;
    progress("mqtt_vs_bridge starting");
    let tmp = tempfile::tempdir()?;
    let work = Arc::new(Workload::new(n)?);
    let bodies = Arc::new(work.bodies.clone());
    println!(
        "mqtt_vs_bridge: {n} Daphnet events per run; mosquitto {}; debug assertions: {}",
        edge_relay::demo::mosquitto::find_binary()?.display(),
        cfg!(debug_assertions)
    );
    println!(
        "A: edge-relay child process, NDJSON bodies of {BODY_EVENTS}, relay defaults except \
         backoff {}..{} ms and buffer.max_bytes 1 GiB; MCP over MQTT (v5, session expiry 0) \
         through Mosquitto to the reference upstream",
        RELAY_BACKOFF_MS.0, RELAY_BACKOFF_MS.1
    );
    println!(
        "B: QoS 1 producer (window {WINDOW}) → local Mosquitto → bridge ({}) → upstream \
         Mosquitto → subscriber (clean_start false, session expiry {SUBSCRIBER_SESSION_S} s, \
         QoS 1); both brokers persistence true, {}, max_queued_messages \
         {MAX_QUEUED_MESSAGES}",
        opts.bridge_protocol,
        opts.autosave()
    );
    println!(
        "Outage: the upstream broker stopped (SIGTERM; B's saves the subscriber's session) and, \
         in A, the sink stopped, before production; both restarted after it. Drain time runs \
         from the restart to the last event stored (A: sink acked_seq) or the last new one \
         received (B: wait for count = accepted, or {QUIET:?} without progress; then \
         {DUPLICATE_SETTLE:?} more for late duplicates)"
    );
    println!();

    let mut rows = Vec::new();
    rows.push(run_relay(tmp.path(), &work, false, &bodies).await?);
    let (row, bridge_config) = run_bridge(tmp.path(), &work, &opts, false).await?;
    rows.push(row);
    rows.push(run_relay(tmp.path(), &work, true, &bodies).await?);
    rows.push(run_bridge(tmp.path(), &work, &opts, true).await?.0);
    let (drain_only, first) = run_drain_only(tmp.path(), n, &bodies).await?;

    print_table(&rows);
    println!();
    println!(
        "MCP over MQTT drain, no outage: {n} buffered events drained through Mosquitto to the \
         sink in {} ms = {} ev/s (first stored after {} ms: sink start, discovery, initialize)",
        ms(drain_only),
        rate(n, drain_only),
        first.map_or("-".into(), ms)
    );
    println!();
    println!("Notes:");
    for r in &rows {
        println!("[{} / {}]", r.scenario, r.system);
        for note in &r.notes {
            println!("  - {note}");
        }
    }
    println!();
    println!("Local (bridging) Mosquitto config used in B/C:");
    for line in bridge_config.lines() {
        println!("  {line}");
    }
    Ok(())
}
