//! A full disk (issue 12 item 1), on a small real filesystem: a tmpfs mounted for the test
//! (root only; without root the test prints SKIPPED, and fails under `CI=true`). Another file
//! fills it while the upstream is down; then space comes back and the upstream returns.
//!
//! - with the free-space watermark, ingest answers 507 "disk full" before sled runs out, and
//!   resumes once the filler is gone;
//! - with no watermark, sled itself hits ENOSPC, an error it keeps for good: the daemon
//!   reopens the store by itself once space is back (no restart), and everything accepted
//!   arrives exactly once.

use edge_relay_testkit as support;

use std::path::{Path, PathBuf};
use std::process::Command;

use edge_relay::demo::audit::audit;
use serde_json::{Value, json};
use support::process::{free_port, poll_until};
use support::*;
use uuid::Uuid;

/// Size of the test filesystem.
const FS_BYTES: u64 = 24 << 20;
/// Payload of one test event: large, so the disk fills in a few hundred requests (about a
/// thousand: stored compressed, it takes about half).
const PAD: usize = 30_000;

/// A tmpfs mounted on a temp dir, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root to mount a tmpfs".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_BYTES}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Tmpfs {
            path: dir.path().to_owned(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn mount_or_skip(name: &str) -> Option<Tmpfs> {
    match Tmpfs::mount() {
        Ok(fs) => Some(fs),
        Err(reason) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{name} cannot run under CI=true: {reason}"
            );
            eprintln!("{name} SKIPPED: {reason}");
            None
        }
    }
}

/// Fills the filesystem of `dir` with a file until about `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let free = fs_free(dir);
    let size = free.saturating_sub(leave);
    std::fs::write(&path, vec![0u8; size as usize]).unwrap();
    path
}

fn fs_free(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// An event of about [`PAD`] bytes of random hex: the outbox compresses its chunks, and hex
/// digits keep about half their size, so the disk does fill.
fn big_event(n: u64) -> Value {
    let pad: String = (0..PAD.div_ceil(32))
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect();
    json!({"id": Uuid::now_v7(), "source": "fill", "data": {"n": n, "pad": &pad[..PAD]}})
}

/// Posts big events until one is refused; returns what was accepted and the refusal.
async fn post_until_refused(
    relay: &edge_relay::daemon::Daemon,
    accepted_all: &mut Vec<(u64, Uuid)>,
) -> (u16, Value) {
    for n in 0..10_000 {
        let (code, answer) = post(relay.ingest_addr, big_event(n).to_string()).await;
        if code != 200 {
            return (code, answer);
        }
        accepted_all.extend(accepted(&answer));
    }
    panic!("the disk never filled");
}

/// Fills the disk to `leave` free bytes with the upstream down, checks the 507, then (when
/// `drain_while_full`) lets the upstream drain everything while the disk is still full, frees
/// the space, checks that ingest resumes, and audits the upstream's store.
async fn run(name: &str, min_free_bytes: u64, leave: u64, drain_while_full: bool) {
    let _ = env_logger::builder().is_test(true).try_init();
    let Some(fs) = mount_or_skip(name) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut config = relay_config(&fs.path.join("relay"), &format!("http://{addr}/mcp"));
    config.buffer.min_free_bytes = min_free_bytes;
    let relay = start_relay(config).await;
    let mut accepted_all = Vec::new();
    let (code, answer) = post(relay.ingest_addr, big_event(0).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    accepted_all.extend(accepted(&answer));

    // Another file takes the space; the upstream is down, so nothing drains.
    let filler = fill(&fs.path, leave);
    let (code, answer) = post_until_refused(&relay, &mut accepted_all).await;
    assert_eq!(code, 507, "{answer}");
    let text = answer["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("disk full")
            || text.contains("No space left")
            || text.contains("storage full"),
        "{text}"
    );
    assert!(!text.contains("Custom {"), "a debug dump: {text}");
    eprintln!(
        "{name}: refused after {} events: {text}",
        accepted_all.len()
    );

    let sink_dir = tmp.path().join("sink");
    let mut sink = None;
    if drain_while_full {
        // Acks and deletes need room too: the watermark kept it.
        sink = Some(Sink::start_on(addr, &sink_dir).await);
        drained(&relay).await;
    }
    // Space comes back: ingest resumes by itself, no restart.
    std::fs::remove_file(filler).unwrap();
    let resumed = poll_until(
        WAIT,
        "ingest accepts again once space is back",
        || async {
            let (code, answer) = post(relay.ingest_addr, big_event(1).to_string()).await;
            (code == 200).then_some(answer)
        },
        |_| true,
    )
    .await;
    accepted_all.extend(accepted(&resumed));

    // The upstream comes back: everything accepted arrives exactly once, in order.
    let sink = match sink {
        Some(sink) => sink,
        None => Sink::start_on(addr, &sink_dir).await,
    };
    drained(&relay).await;
    let stored = sink.events("test-gw", relay.outbox.stats().stream);
    let result = audit(&accepted_all, &stored);
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered, accepted_all.len());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_below_the_watermark_answers_507_and_resumes() {
    run("disk-full-watermark", 6 << 20, 10 << 20, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_out_of_space_recovers_without_a_restart() {
    run("disk-full-enospc", 0, 3 << 20, false).await;
}
