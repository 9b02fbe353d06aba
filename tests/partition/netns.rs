//! Kernel-level partitions: the relay and the reference upstream as real processes in two
//! network namespaces joined by a veth pair, partitioned by link down/up, an `ip route`
//! blackhole and (when `nft` is installed) an nftables drop rule.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_relay::demo::audit::audit;
use edge_relay::sink::SinkStore;
use edge_relay::status::StatusReport;
use rand::RngExt;
use rand::rngs::StdRng;
use serde_json::Value;
use uuid::Uuid;

use crate::real_net::*;
use crate::summary::FamilySummary;
use crate::support::process::{all_acked, binary, kill_9, poll_until, write_config_with};
use crate::support::{WAIT, accepted, event};

/// Prefix of every namespace and interface this family creates (stale ones are deleted).
const PREFIX: &str = "erpart";
/// The upstream's and the relay's addresses, which exist only inside the namespaces.
const SINK_ADDR: &str = "10.213.0.1";
const RELAY_ADDR: &str = "10.213.0.2";
/// The sink's port inside its namespace.
const SINK_PORT: u16 = 8787;
/// The relay's ingest, on loopback inside its namespace.
const INGEST: &str = "127.0.0.1:7878";
/// Runs in CI; `PARTITION_NETNS_RUNS` raises it.
const RUNS: u64 = 3;
/// Liveness bound after the last heal: request timeouts, backoff, then the backlog.
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// Bound on the producer's last batch.
const PRODUCER_STOP: Duration = Duration::from_secs(30);

/// Why the family cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    if !root {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    if !tool("ip", &["-V"]) {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// The tool runs (is installed).
fn tool(name: &str, args: &[&str]) -> bool {
    Command::new(name)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `ip ARGS`; panics with its stderr when it fails.
fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip netns exec NS <edge-relay> ARGS...`.
fn in_ns(ns: &str) -> Command {
    let mut c = family_child("ip");
    c.args(["netns", "exec", ns, binary()]);
    c
}

/// Two namespaces and their veth pair; dropping it (also on panic) kills the processes it
/// started and deletes the namespaces, which deletes the veth pair.
struct Partitioned {
    sink_ns: String,
    relay_ns: String,
    sink_if: String,
    relay_if: String,
    children: Vec<Child>,
}

impl Partitioned {
    /// Deletes namespaces left by runs whose process is gone, then creates this run's.
    fn create(run: u64) -> Self {
        let pid = std::process::id();
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let owner = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(owner) = owner
                && !Path::new(&format!("/proc/{owner}")).exists()
            {
                eprintln!("partition: netns: deleting stale namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
        let net = Self {
            sink_ns: format!("{PREFIX}-{pid}-{run}-s"),
            relay_ns: format!("{PREFIX}-{pid}-{run}-r"),
            // Interface names: at most 15 bytes.
            sink_if: format!("ers{}", pid % 1_000_000),
            relay_if: format!("err{}", pid % 1_000_000),
            children: Vec::new(),
        };
        for ns in [&net.sink_ns, &net.relay_ns] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link",
            "add",
            &net.sink_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.relay_if,
        ]);
        for (ns, dev, addr) in [
            (&net.sink_ns, &net.sink_if, SINK_ADDR),
            (&net.relay_ns, &net.relay_if, RELAY_ADDR),
        ] {
            ip(&["link", "set", dev, "netns", ns]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        net
    }

    /// Starts `edge-relay ARGS` in `ns`; it is killed when `self` drops.
    fn spawn(&mut self, ns: &str, args: &[&str], extra: &Path) -> usize {
        let child = in_ns(ns).args(args).arg(extra).spawn().unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    fn kill(&mut self, child: usize) {
        kill_9(&mut self.children[child]);
    }
}

impl Drop for Partitioned {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.sink_ns, &self.relay_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // A pair that never reached its namespaces (a failure mid-create) is still here.
        let _ = Command::new("ip")
            .args(["link", "del", &self.sink_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// One way of cutting the link between the namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// `ip link set dev <relay side> down`: carrier lost, packets dropped both ways.
    LinkDown,
    /// `ip route add blackhole <sink>` in the relay's namespace: the relay's packets vanish.
    RouteBlackhole,
    /// nftables rule in the sink's namespace dropping everything from the relay.
    NftDrop,
}

impl Cut {
    fn apply(self, net: &Partitioned, on: bool) {
        let (add, up) = if on { ("add", "down") } else { ("del", "up") };
        match self {
            Cut::LinkDown => ip(&["-n", &net.relay_ns, "link", "set", "dev", &net.relay_if, up]),
            Cut::RouteBlackhole => ip(&[
                "-n",
                &net.relay_ns,
                "route",
                add,
                "blackhole",
                &format!("{SINK_ADDR}/32"),
            ]),
            Cut::NftDrop => {
                let ns = net.sink_ns.as_str();
                let nft = |rule: &str| run("ip", &["netns", "exec", ns, "nft", rule]);
                if on {
                    nft("add table inet partition");
                    nft(
                        "add chain inet partition in { type filter hook input priority 0; policy accept; }",
                    );
                    nft(&format!(
                        "add rule inet partition in ip saddr {RELAY_ADDR} drop"
                    ));
                } else {
                    nft("delete table inet partition");
                }
            }
        }
    }
}

/// Runs `edge-relay ARGS` in the relay's namespace with `body` on stdin; its stdout if it
/// exited 0.
async fn relay_cli(ns: &str, args: &[&str], body: Option<&[u8]>) -> Option<String> {
    let mut c = tokio::process::Command::new("ip");
    c.args(["netns", "exec", ns, binary()])
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().ok()?;
    let mut stdin = child.stdin.take()?;
    if let Some(body) = body {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(body).await.ok()?;
    }
    drop(stdin);
    let out = child.wait_with_output().await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn status(ns: &str) -> Option<StatusReport> {
    let out = relay_cli(ns, &["status", "--json", "--addr", INGEST], None).await?;
    serde_json::from_str(&out).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns() {
    if let Some(reason) = unsupported() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "partition: family=netns cannot run under CI=true: {reason}"
        );
        eprintln!("partition: family=netns SKIPPED: {reason}");
        return;
    }
    let mut cuts = vec![Cut::LinkDown, Cut::RouteBlackhole];
    if tool("nft", &["--version"]) {
        cuts.push(Cut::NftDrop);
    } else {
        eprintln!(
            "partition: family=netns: nft not installed (apt-get install nftables): partitions by link down/up and ip route blackhole only"
        );
    }
    let mut rng = seeded("netns", "netns");
    let mut summary = FamilySummary::new("netns");
    for run in 0..count_from_env("PARTITION_NETNS_RUNS", RUNS) {
        one_run(&mut summary, &mut rng, run, &cuts).await;
    }
    summary.publish();
}

async fn one_run(summary: &mut FamilySummary, rng: &mut StdRng, run: u64, cuts: &[Cut]) {
    let tmp = tempfile::tempdir().unwrap();
    let sink_dir = tmp.path().join("sink");
    let config = relay_config_file(tmp.path());
    let mut net = Partitioned::create(run);
    let sink_listen = format!("{SINK_ADDR}:{SINK_PORT}");
    let sink_ns = net.sink_ns.clone();
    let relay_ns = net.relay_ns.clone();
    let sink = net.spawn(
        &sink_ns,
        &["sink", "--listen", &sink_listen, "--data-dir"],
        &sink_dir,
    );
    let relay = net.spawn(&relay_ns, &["run", "--config"], &config);
    poll_until(
        WAIT,
        "relay up in its namespace",
        || status(&relay_ns),
        |_| true,
    )
    .await;
    let producer = ns_producer(relay_ns.clone(), rng.random());
    let mut schedule = Vec::new();
    for _ in 0..rng.random_range(2..=4) {
        let cut = cuts[rng.random_range(0..cuts.len())];
        schedule.push(cut);
        cut.apply(&net, true);
        hold(rng, 300..1_500).await;
        cut.apply(&net, false);
        hold(rng, 100..500).await;
    }
    let healed = Instant::now();
    let accepted = producer.finish(PRODUCER_STOP).await;
    let what = format!("liveness: netns run {run} drained after {schedule:?}");
    let report = poll_until(DRAIN_BOUND, &what, || status(&relay_ns), all_acked).await;
    let drain = healed.elapsed();
    net.kill(relay);
    net.kill(sink);
    drop(net);
    let store = SinkStore::open(&sink_dir).unwrap();
    let acked_seq = store
        .cursor(GATEWAY, report.stream)
        .await
        .unwrap()
        .acked_seq;
    assert_eq!(
        acked_seq,
        Some(report.acked_seq),
        "the relay's acked seq equals the upstream's acked seq"
    );
    let result = audit(&accepted, &store.events(GATEWAY, report.stream).unwrap());
    let label = format!("run={run} schedule={schedule:?}");
    verdict(
        summary,
        &label,
        &result,
        schedule.len() as u64,
        drain,
        DRAIN_BOUND,
    );
}

fn relay_config_file(dir: &Path) -> PathBuf {
    let upstream = format!("url = \"http://{SINK_ADDR}:{SINK_PORT}/mcp\"");
    let relay = "backoff_initial_ms = 10\nbackoff_max_ms = 200\nrequest_timeout_ms = 1000";
    write_config_with(dir, GATEWAY, INGEST, &upstream, relay)
}

/// A producer inside the relay's namespace: `edge-relay send --stdin` with batches of up to 50
/// events, each retried with the same ids until the daemon answers 200.
fn ns_producer(ns: String, seed: u64) -> Producer<(u64, Uuid)> {
    Producer::spawn(move |stopped, counted| async move {
        let mut rng: StdRng = rand::SeedableRng::seed_from_u64(seed);
        let mut log = Vec::new();
        let mut n = 0;
        while !stopped.is_cancelled() {
            let size = rng.random_range(1..=50);
            let body: Vec<Value> = (0..size).map(|i| event("netns", n + i)).collect();
            n += size;
            let body = Value::Array(body).to_string().into_bytes();
            loop {
                let args = ["send", "--stdin", "--addr", INGEST];
                if let Some(out) = relay_cli(&ns, &args, Some(&body)).await {
                    log.extend(accepted(&serde_json::from_str(&out).unwrap()));
                    counted();
                    break;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            hold(&mut rng, 20..60).await;
        }
        log
    })
}
